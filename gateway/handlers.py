"""Thin HTTP handlers: parse, call one service function, serialise."""

from __future__ import annotations

import math
import re
import uuid
from datetime import UTC, datetime
from typing import TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from db.status import JobStatus, is_terminal
from gateway import idempotency, services
from gateway.auth import principal
from gateway.keys import DECODE_POOL, ENGINE, EVENTS, JOB_WRITER, NUDGER, QUEUED_GAUGE, SETTINGS
from gateway.problems import field_error, not_found
from gateway.schemas import INT32_MAX, HealthPublic, JobPublic, JobsPublic
from gateway.submission import parse_submission, validation_problem
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
                if not math.isfinite(seconds):  # nan would compare false to every bound below
                    raise field_error("Prefer", "wait must be a finite number of seconds", status=400)
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


def bounded_int(raw: str, name: str, low: int, high: int) -> int:
    """A query value as an integer in [low, high]; 400 naming it otherwise. ASCII digits only:
    ``int()`` alone also takes ``"1_000"``, ``" 7 "`` and other scripts' digits."""
    if not _INTEGER.fullmatch(raw):
        raise field_error(name, "must be an integer", status=400)
    # Compared as text first: int() of a 5000-digit string is a ValueError (and slow) in itself.
    value = int(raw) if len(raw) <= 20 else None
    if value is None or not low <= value <= high:
        raise field_error(name, f"must be between {low} and {high}", status=400)
    return value


_INTEGER = re.compile(r"-?[0-9]+")


def query_datetime(request: web.Request, name: str) -> datetime | None:
    """``?name=`` as an aware UTC datetime (a naive one is taken as UTC); None when absent, 400 when it is
    not ISO 8601 or has no UTC instant (year 1 at +14:00: an OverflowError, which asyncpg made a 500)."""
    raw = request.query.get(name)
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw)
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise field_error(name, "an ISO 8601 date or date-time", status=400) from None


def page_limit(request: web.Request) -> int:
    """``?limit=`` of a list route (rows per page), within the settings' bounds."""
    settings = request.app[SETTINGS]
    raw = request.query.get("limit")
    return settings.default_page_size if raw is None else bounded_int(raw, "limit", 1, settings.max_page_size)


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
        request.app[DECODE_POOL],
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
    raw = request.match_info["index"]
    # Mask indexes are int32 in the database: a larger (or non-ASCII) one names no mask.
    if not raw.isascii() or not raw.isdigit() or len(raw) > 10 or int(raw) > INT32_MAX:
        raise not_found("mask")
    index = int(raw)
    rows = await services.load_masks(request.app[ENGINE], who.tenant_id, job_id_from(request), index)
    # Decoding and encoding a mask of up to max_image_pixels: in a decode process, within its budget.
    body = await services.render_masks(request.app[DECODE_POOL], who.tenant_id, services.mask_png_of, rows)
    return web.Response(body=body, content_type="image/png")


async def get_masks_npz(request: web.Request) -> web.Response:
    who = principal(request, "jobs:read")
    rows = await services.load_masks(request.app[ENGINE], who.tenant_id, job_id_from(request), None)
    body = await services.render_masks(request.app[DECODE_POOL], who.tenant_id, services.masks_npz_of, rows)
    return web.Response(body=body, content_type="application/octet-stream")


async def healthz(request: web.Request) -> web.Response:
    return json_response(HealthPublic(status="ok"))


async def readyz(request: web.Request) -> web.Response:
    checks = await services.readiness(request.app[ENGINE], request.app[NUDGER])
    ready = all(v == "ok" for v in checks.values())
    return json_response(HealthPublic(status="ok" if ready else "unavailable", checks=checks), 200 if ready else 503)
