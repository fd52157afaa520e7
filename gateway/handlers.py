"""Thin HTTP handlers: parse, call one service function, serialise."""

from __future__ import annotations

import asyncio
import uuid
from typing import TypeVar

import numpy as np
import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from db.status import JobStatus, is_terminal
from gateway import idempotency, services
from gateway.auth import principal
from gateway.keys import ENGINE, EVENTS, JOB_WRITER, NUDGER, QUEUED_GAUGE, SETTINGS
from gateway.problems import field_error, not_found
from gateway.schemas import HealthPublic, JobPublic, JobsPublic
from gateway.submission import parse_submission, validation_problem
from medparse import masks
from medparse.settings import Settings


def json_response(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(model.model_dump(mode="json")), status=status,
        content_type="application/json", headers=headers,
    )


def requested_wait(request: web.Request, settings: Settings) -> float | None:
    """Seconds from ``Prefer: wait=N`` (RFC 7240), capped by the max_wait_seconds setting."""
    for header in request.headers.getall("Prefer", []):
        for preference in header.split(","):
            name, _, value = preference.strip().partition("=")
            if name.strip().lower() == "wait":
                try:
                    seconds = float(value.strip().strip('"'))
                except ValueError:
                    raise field_error("Prefer", "wait must be a number of seconds", status=400) from None
                return max(0.0, min(seconds, settings.max_wait_seconds))
    return None


M = TypeVar("M", bound=BaseModel)


def path_uuid(request: web.Request, name: str, what: str) -> uuid.UUID:
    """The id in the path; one that is not a UUID names nothing: 404 ``<what>_not_found``."""
    try:
        return uuid.UUID(request.match_info[name])
    except ValueError:
        raise not_found(what) from None


def job_id_from(request: web.Request) -> uuid.UUID:
    return path_uuid(request, "job_id", "job")


def page_limit(request: web.Request) -> int:
    """``?limit=`` of a list route (rows per page), within the settings' bounds."""
    settings = request.app[SETTINGS]
    try:
        limit = int(request.query.get("limit", settings.default_page_size))
    except ValueError:
        raise field_error("limit", "must be an integer", status=400) from None
    if not 1 <= limit <= settings.max_page_size:
        raise field_error("limit", f"must be between 1 and {settings.max_page_size}", status=400)
    return limit


async def parse_body(request: web.Request, model: type[M], *, empty: bytes = b"") -> M:
    """The JSON body as ``model`` (an empty body reads as ``empty``); 422 naming the fields otherwise."""
    try:
        return model.model_validate_json(await request.read() or empty)
    except ValidationError as exc:
        raise validation_problem(exc) from None


async def _wait_after_submit(
    request: web.Request, job: JobPublic, tenant_id: uuid.UUID
) -> tuple[JobPublic, dict[str, str]]:
    wait = requested_wait(request, request.app[SETTINGS])
    if wait is None:
        return job, {}
    if not is_terminal(job.status):  # just written, no await since: no notification missed, no read needed
        job = await services.wait_for_job(request.app[ENGINE], request.app[EVENTS], tenant_id, job.id, wait, known=job)
    return job, {"Preference-Applied": f"wait={wait:g}"}


async def create_job(request: web.Request) -> web.Response:
    who = principal(request, "jobs:write")
    settings = request.app[SETTINGS]
    submission = await parse_submission(request, settings)
    submitted = await services.submit_job(
        request.app[ENGINE], request.app[JOB_WRITER], request.app[NUDGER], settings, who, submission,
        idempotency.key_from(request),
        request.app[QUEUED_GAUGE],
    )
    if submitted.replay is not None:
        return submitted.replay.to_response()
    assert submitted.job is not None
    job, headers = await _wait_after_submit(request, submitted.job, who.tenant_id)
    return json_response(job, status=202, headers={"Location": job.urls.get, **headers})


async def get_job(request: web.Request) -> web.Response:
    who = principal(request, "jobs:read")
    wait = requested_wait(request, request.app[SETTINGS])
    if wait is None:
        return json_response(await services.get_job(request.app[ENGINE], who.tenant_id, job_id_from(request)))
    # Subscribes before its one read, so a completion between the two cannot be missed.
    job = await services.wait_for_job(
        request.app[ENGINE], request.app[EVENTS], who.tenant_id, job_id_from(request), wait
    )
    return json_response(job, headers={"Preference-Applied": f"wait={wait:g}"})


async def list_jobs(request: web.Request) -> web.Response:
    who = principal(request, "jobs:read")
    query = request.query
    status = None
    if query.get("status"):
        try:
            status = JobStatus(query["status"])
        except ValueError:
            raise field_error("status", f"one of {', '.join(s.value for s in JobStatus)}", status=400) from None
    jobs, cursor = await services.list_jobs(
        request.app[ENGINE], who.tenant_id, status=status, limit=page_limit(request), cursor=query.get("cursor")
    )
    return json_response(JobsPublic(data=jobs, next_cursor=cursor))


async def cancel_job(request: web.Request) -> web.Response:
    who = principal(request, "jobs:write")
    job = await services.cancel_job(request.app[ENGINE], who.tenant_id, job_id_from(request))
    await request.app[EVENTS].announce(str(job.id))
    return json_response(job)


async def delete_job(request: web.Request) -> web.Response:
    who = principal(request, "jobs:write")
    job_id = job_id_from(request)
    await services.delete_job(request.app[ENGINE], who.tenant_id, job_id)
    await request.app[EVENTS].announce(str(job_id))
    return web.Response(status=204)


async def get_mask_png(request: web.Request) -> web.Response:
    who = principal(request, "jobs:read")
    try:
        index = int(request.match_info["index"])
    except ValueError:
        raise not_found("mask") from None
    rows = await services.load_masks(request.app[ENGINE], who.tenant_id, job_id_from(request), index)
    # Decoding and encoding a mask of up to max_image_pixels is CPU work: not on the event loop.
    body = await asyncio.to_thread(lambda: masks.mask_png(services.decode_masks(rows)[0]))
    return web.Response(body=body, content_type="image/png")


async def get_masks_npz(request: web.Request) -> web.Response:
    who = principal(request, "jobs:read")
    rows = await services.load_masks(request.app[ENGINE], who.tenant_id, job_id_from(request), None)
    body = await asyncio.to_thread(lambda: masks.masks_npz(np.stack(services.decode_masks(rows))))
    return web.Response(body=body, content_type="application/octet-stream")


async def healthz(request: web.Request) -> web.Response:
    return json_response(HealthPublic(status="ok"))


async def readyz(request: web.Request) -> web.Response:
    checks = await services.readiness(request.app[ENGINE], request.app[NUDGER])
    ready = all(v == "ok" for v in checks.values())
    return json_response(HealthPublic(status="ok" if ready else "unavailable", checks=checks), 200 if ready else 503)
