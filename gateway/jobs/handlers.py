"""Thin HTTP handlers: parse, call one service function, serialise."""

from __future__ import annotations

import uuid

from aiohttp import web

from db.status import JobStatus, is_terminal
from gateway.http import idempotency
from gateway.http.auth import principal
from gateway.http.params import job_id_from, json_response, page_limit, requested_wait
from gateway.http.problems import field_error, not_found
from gateway.jobs import services
from gateway.jobs.schemas import INT32_MAX, HealthPublic, JobPublic, JobsPublic
from gateway.jobs.submission import parse_submission
from gateway.keys import DECODE_POOL, ENGINE, EVENTS, JOB_WRITER, NUDGER, QUEUED_GAUGE, SETTINGS


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
