"""Thin HTTP handlers: parse, call one service function, serialise."""

from __future__ import annotations

import uuid

from aiohttp import web

from db.status import JobStatus, is_terminal
from gateway.http import idempotency
from gateway.http.auth import principal
from gateway.http.cursors import decode_cursor, encode_cursor
from gateway.http.params import job_id_from, json_response, page_limit, requested_wait
from gateway.http.problems import field_error
from gateway.jobs import services
from gateway.jobs.schemas import HealthPublic, JobPublic, JobsPublic
from gateway.jobs.submission import parse_submission
from gateway.keys import DEPS, SETTINGS


async def _wait_after_submit(
    request: web.Request, job: JobPublic, tenant_id: uuid.UUID
) -> tuple[JobPublic, dict[str, str]]:
    wait = requested_wait(request, request.app[SETTINGS])
    if wait is None:
        return job, {}
    if not is_terminal(job.status):  # just written, no await since: no notification missed, no read needed
        job = await services.wait_for_job(request.app[DEPS], tenant_id, job.id, wait, known=job)
    return job, {"Preference-Applied": f"wait={wait:g}"}


@idempotency.handles_key(idempotency.KeyHandling.IN_USE_CASE)  # claimed and stored in the job's transaction
async def create_job(request: web.Request) -> web.Response:
    who = principal(request, "jobs:write")
    deps = request.app[DEPS]
    submission = await parse_submission(request, deps.settings)
    submitted = await services.submit_job(deps, who, submission, idempotency.key_from(request))
    if submitted.replay is not None:
        return idempotency.replayed(submitted.replay)
    assert submitted.job is not None
    job, headers = await _wait_after_submit(request, submitted.job, who.tenant_id)
    return json_response(job, status=202, headers={"Location": job.urls.get, **headers})


async def get_job(request: web.Request) -> web.Response:
    who = principal(request, "jobs:read")
    wait = requested_wait(request, request.app[SETTINGS])
    if wait is None:
        return json_response(await services.get_job(request.app[DEPS], who.tenant_id, job_id_from(request)))
    # Subscribes before its one read, so a completion between the two cannot be missed.
    job = await services.wait_for_job(request.app[DEPS], who.tenant_id, job_id_from(request), wait)
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
    limit = page_limit(request)
    after = decode_cursor(query["cursor"]) if query.get("cursor") else None
    jobs, more = await services.list_jobs(request.app[DEPS], who.tenant_id, status=status, limit=limit, after=after)
    return json_response(JobsPublic(data=jobs, next_cursor=encode_cursor(*more) if more else None))


async def cancel_job(request: web.Request) -> web.Response:
    who = principal(request, "jobs:write")
    return json_response(await services.cancel_job(request.app[DEPS], who.tenant_id, job_id_from(request)))


async def delete_job(request: web.Request) -> web.Response:
    who = principal(request, "jobs:write")
    await services.delete_job(request.app[DEPS], who.tenant_id, job_id_from(request))
    return web.Response(status=204)


async def healthz(request: web.Request) -> web.Response:
    return json_response(HealthPublic(status="ok"))


async def readyz(request: web.Request) -> web.Response:
    checks = await services.readiness(request.app[DEPS])
    ready = all(v == "ok" for v in checks.values())
    return json_response(HealthPublic(status="ok" if ready else "unavailable", checks=checks), 200 if ready else 503)
