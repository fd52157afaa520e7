"""Use cases of the job API. Each one opens exactly one transaction; handlers stay thin."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
import orjson
from aiohttp import web
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from db import jobs as repo
from db.job_snapshot import decode_snapshot
from db.outbox import record_transition_async
from db.status import CANCELABLE, JobStatus, is_terminal
from db.webhooks import OUTBOX_COLUMNS
from gateway.http import idempotency
from gateway.http.auth import Principal
from gateway.http.cursors import decode_cursor, encode_cursor
from gateway.http.problems import ApiProblem, field_error, not_found
from gateway.http.tenancy import QueuedJobsGauge, check_storage_quota, job_row, tenant_transaction
from gateway.jobs import medical
from gateway.jobs.dispatch import DispatchNudger
from gateway.jobs.events import JobEventListener
from gateway.jobs.schemas import JobPublic
from gateway.jobs.submission import JobSubmission
from gateway.jobs.writer import JobWriter, PendingJob
from gateway.webhooks.services import attach_job_webhook
from medparse import imaging, job_links, masks
from medparse.decode_pool import DecodeBusy, DecodeLimitExceeded, DecodePool, decodes_inline
from medparse.medical.errors import OptionRejected
from medparse.settings import Settings

T = TypeVar("T")

#: Images up to this size are probed (and hashed) on the event loop: a thread hop costs more.
INLINE_PROBE_BYTES = 256 * 1024


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything we store is UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def to_public(row: Mapping[Any, Any], mask_rows: Sequence[Mapping[Any, Any]] | None) -> JobPublic:
    error = None
    if row["error_code"]:
        error = {"code": row["error_code"], "message": row["error_message"] or ""}
    result = None
    if row["status"] == JobStatus.succeeded.value and mask_rows is not None:
        result = {
            "width": row["result_width"],
            "height": row["result_height"],
            "masks": [
                {
                    "index": m["index"],
                    "prompt": m["prompt"],
                    "label": m["label"],
                    "area_px": m["area_px"],
                    "bbox": m["bbox"],
                    "url": job_links.mask_path(row, m["index"]),
                }
                for m in mask_rows
            ],
            "npz_url": job_links.npz_path(row),
            "provenance": row["result_meta"] or {},
        }
    return JobPublic.model_validate(
        medical.public_extras(row, {  # DICOM/NIfTI details, progress, result formats (gateway/jobs/medical.py)
            "id": row["id"],
            "status": row["status"],
            "prompts": row["prompts"],
            "options": row["options"],
            "created_at": as_utc(row["created_at"]),
            "started_at": as_utc(row["started_at"]),
            "completed_at": as_utc(row["completed_at"]),
            "attempts": row["attempts"],
            "priority": row["priority"],
            "error": error,
            "input": {
                "width": row["input_width"],
                "height": row["input_height"],
                "format": row["input_format"],
                "bytes": row["input_bytes"],
            },
            "result": result,
            "urls": {"get": job_links.job_path(row["id"]), "cancel": f"{job_links.job_path(row['id'])}/cancel"},
        })
    )


async def _off_the_loop_if_large(size: int, work: Callable[[], T]) -> T:
    """``work()`` on the event loop for an image up to INLINE_PROBE_BYTES, else in a thread (hashing)."""
    if size <= INLINE_PROBE_BYTES:
        return work()
    return await asyncio.to_thread(work)


def decode_busy_problem(exc: DecodeBusy) -> ApiProblem:
    """503 for a request that found every decode process taken (medparse/decode_pool.py)."""
    return ApiProblem(
        503, "decode_busy", f"image: the service is decoding other uploads ({exc.message}); retry later",
        headers={"Retry-After": str(exc.retry_after_s)},
    )


async def probe_upload(
    image: bytes, settings: Settings, decoder: DecodePool, options: Mapping[str, Any] | None = None,
    tenant_id: uuid.UUID | None = None,
) -> imaging.ImageInfo:
    """The upload's ImageInfo; 4xx problems naming ``image`` (or the option) otherwise.

    A small plain PNG is checked here, on the event loop (the hot path: no decode, no thread hop);
    every other upload has its headers checked in a thread, then is decoded in a decode process, within
    its memory and time budget: one over it is 422 ``image_too_complex``; no free decode process in time
    is 503 ``decode_busy``.
    """
    try:
        if decodes_inline(image):
            return medical.probe(image, settings, options)
        # Always in a thread: a small file can still declare a costly check (a 130 kB deflated DICOM inflates
        # 128 MiB to be counted, a 140 kB PNG 144 MB of rows): 0.1-0.3 s each on the event loop.
        await asyncio.to_thread(medical.check_headers, image, settings, options)
        return await decoder.run(medical.probe, image, settings, options, nbytes=len(image), party=tenant_id)
    except DecodeBusy as exc:
        raise decode_busy_problem(exc) from None
    except imaging.ImageRejected as exc:
        status = 413 if exc.code == "image_too_large" else (415 if exc.code == "unsupported_format" else 422)
        fields = [{"field": "image", "message": exc.message}]
        raise ApiProblem(status, exc.code, f"image: {exc.message}", fields=fields) from None
    except OptionRejected as exc:  # e.g. frame 7 of a 2-frame DICOM
        raise field_error(exc.field, exc.message, code="invalid_option") from None


@dataclass(frozen=True)
class Submitted:
    """A new job, or (for a repeated Idempotency-Key) the first request's stored response."""

    job: JobPublic | None
    replay: idempotency.StoredResponse | None = None


async def submit_job(
    engine: AsyncEngine,
    writer: JobWriter,
    nudger: DispatchNudger,
    settings: Settings,
    who: Principal,
    submission: JobSubmission,
    idempotency_key: str | None,
    gauge: QueuedJobsGauge,
    decoder: DecodePool,
) -> Submitted:
    """Validate the image and check the queued-jobs quota (from ``gauge``, or one count of its own),
    then commit the job and its bytes in one transaction (shared with concurrent submissions: see
    gateway/jobs/writer.py) and nudge dispatch."""
    if len(submission.image) > who.quotas.max_image_bytes:
        raise ApiProblem(
            413, "payload_too_large", f"image: larger than this tenant's {who.quotas.max_image_bytes} bytes",
            fields=[{"field": "image", "message": "too large"}],
        )
    reservation = None
    if idempotency_key is not None:
        image = submission.image
        digest = await _off_the_loop_if_large(len(image), lambda: hashlib.sha256(image).hexdigest())
        outcome = await idempotency.reserve(
            engine, settings, who.tenant_id, idempotency_key,
            idempotency.fingerprint("POST /v1/jobs", *submission.fingerprint_parts(digest)),
        )
        if isinstance(outcome, idempotency.StoredResponse):
            return Submitted(job=None, replay=outcome)
        reservation = outcome
    try:
        job = await _insert_job(engine, writer, settings, who, submission, reservation, gauge, decoder)
    except BaseException:
        if reservation is not None:
            await idempotency.release(engine, reservation)
        raise
    nudger.nudge()
    return Submitted(job=job)


async def _insert_job(
    engine: AsyncEngine,
    writer: JobWriter,
    settings: Settings,
    who: Principal,
    submission: JobSubmission,
    reservation: idempotency.Reservation | None,
    gauge: QueuedJobsGauge,
    decoder: DecodePool,
) -> JobPublic:
    options = submission.options.model_dump(mode="json", exclude_none=True)
    # Before the probe: a tenant whose store is full costs no decode.
    await check_storage_quota(
        engine, who.tenant_id, who.quotas.max_stored_bytes, len(submission.image), gauge.stored_bytes
    )
    info = await probe_upload(submission.image, settings, decoder, options, who.tenant_id)
    new = repo.NewJob(
        id=uuid.uuid4(),
        tenant_id=who.tenant_id,
        prompts=submission.prompts,
        options=options,
        input_format=info.format,
        input_width=info.width,
        input_height=info.height,
        image=submission.image,
        now=utcnow(),
        priority=submission.priority,
        input_meta=info.details,
    )
    job = to_public(_new_job_row(new, info, len(submission.image)), None)
    await _check_queued_quota(engine, who, gauge)
    # Built before the transaction, which other submissions may share (gateway/jobs/writer.py).
    stored = job_created_response(job) if reservation is not None else None

    async def in_same_transaction(conn: AsyncConnection) -> None:
        await attach_job_webhook(conn, who.tenant_id, new.id, submission.webhook)  # gateway/webhooks/services.py
        if reservation is not None and stored is not None:
            # Stored in the job's own transaction: a retry after a crash finds the job, never a second one.
            await idempotency.complete_in(conn, reservation, stored, job_id=new.id)

    job_params, input_params = repo.insert_job_params(new)
    needs_more = submission.webhook is not None or reservation is not None
    await writer.write(PendingJob(
        who.tenant_id, job_params, input_params, in_same_transaction if needs_more else None
    ))
    gauge.added(who.tenant_id)
    return job


async def _check_queued_quota(engine: AsyncEngine, who: Principal, gauge: QueuedJobsGauge) -> None:
    """429 when the tenant's queue is full. Soft: concurrent submissions may overshoot by their number."""
    quota = who.quotas.max_queued_jobs
    queued = gauge.estimate(who.tenant_id, quota)
    if queued is None:
        async with tenant_transaction(engine, who.tenant_id) as conn:
            queued = (await conn.execute(repo.COUNT_QUEUED, {"tenant_id": who.tenant_id})).scalar_one()
        gauge.counted(who.tenant_id, queued)
    if queued >= quota:
        raise ApiProblem(
            429, "queued_jobs_quota_exceeded",
            f"this tenant already has {queued} queued jobs (limit {quota}); retry when some have started",
            headers={"Retry-After": "30"},
        )


def job_created_response(job: JobPublic) -> web.Response:
    return web.Response(
        status=202, body=orjson.dumps(job.model_dump(mode="json")), content_type="application/json",
        headers={"Location": job.urls.get},
    )


def _new_job_row(new: repo.NewJob, info: imaging.ImageInfo, size: int) -> dict[str, Any]:
    return {
        "id": new.id, "status": JobStatus.queued.value, "prompts": new.prompts, "options": new.options,
        "created_at": new.now, "started_at": None, "completed_at": None, "attempts": 0,
        "priority": new.priority, "error_code": None, "error_message": None,
        "input_width": info.width, "input_height": info.height, "input_format": info.format,
        "input_bytes": size, "result_width": None, "result_height": None, "result_meta": None,
        "input_meta": info.details, "progress": None,
    }


async def get_job(engine: AsyncEngine, tenant_id: uuid.UUID, job_id: uuid.UUID) -> JobPublic:
    async with tenant_transaction(engine, tenant_id) as conn:
        row = await job_row(conn, tenant_id, job_id)
        mask_rows = None
        if row["status"] == JobStatus.succeeded.value:
            mask_rows = list((await conn.execute(repo.SELECT_MASK_SUMMARIES, {"job_id": job_id})).mappings())
    return to_public(row, mask_rows)


async def wait_for_job(
    engine: AsyncEngine,
    events: JobEventListener,
    tenant_id: uuid.UUID,
    job_id: uuid.UUID,
    seconds: float,
    known: JobPublic | None = None,
) -> JobPublic:
    """The job once it is terminal, or as it is after ``seconds``.

    ``known``: the job as the caller has just written it, with no await since (so no notification
    can have been missed; the dispatchers were only nudged): the first read is skipped.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    with events.subscribe(str(job_id)) as changed:
        job = known if known is not None else await get_job(engine, tenant_id, job_id)
        while not is_terminal(job.status):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await changed.wait(remaining)
            job = _from_snapshot(changed.snapshot, tenant_id, job_id) or await get_job(engine, tenant_id, job_id)
    return job


def _from_snapshot(snapshot: bytes | None, tenant_id: uuid.UUID, job_id: uuid.UUID) -> JobPublic | None:
    """The terminal job a worker's notification carried (as committed), instead of a read."""
    if snapshot is None:
        return None
    row, mask_rows = decode_snapshot(snapshot)
    if row["id"] != job_id or row["tenant_id"] != tenant_id or not is_terminal(JobStatus(row["status"])):
        return None
    return to_public(row, mask_rows if row["status"] == JobStatus.succeeded.value else None)


async def list_jobs(
    engine: AsyncEngine,
    tenant_id: uuid.UUID,
    *,
    status: JobStatus | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[JobPublic], str | None]:
    after = decode_cursor(cursor) if cursor else None
    stmt = repo.list_jobs_stmt(tenant_id, status=status, limit=limit + 1, after=after)
    async with tenant_transaction(engine, tenant_id) as conn:
        rows = list((await conn.execute(stmt)).mappings())
    # List items carry no result; fetch the job itself for its masks.
    jobs = [to_public(r, None) for r in rows[:limit]]
    next_cursor = encode_cursor(jobs[-1].created_at, jobs[-1].id) if len(rows) > limit and jobs else None
    return jobs, next_cursor


async def cancel_job(engine: AsyncEngine, tenant_id: uuid.UUID, job_id: uuid.UUID) -> JobPublic:
    async with tenant_transaction(engine, tenant_id) as conn:
        row = await job_row(conn, tenant_id, job_id)
        current = JobStatus(row["status"])
        if current not in CANCELABLE:
            raise ApiProblem(409, "job_not_cancelable", f"the job is already {current}")
        now = utcnow()
        stmt = repo.transition_stmt(
            job_id, current, JobStatus.canceled, now=now, tenant_id=tenant_id, completed_at=now,
            lease_expires_at=None,
        )
        changed = (await conn.execute(stmt.returning(*repo.JOB_COLUMNS, *OUTBOX_COLUMNS))).mappings().first()
        if changed is None:
            raise ApiProblem(409, "job_changed", "the job changed state meanwhile; fetch it and retry")
        await record_transition_async(conn, job_id, JobStatus.canceled, changed)  # webhook outbox, same transaction
    return to_public(changed, None)  # canceled: no result to read


async def delete_job(engine: AsyncEngine, tenant_id: uuid.UUID, job_id: uuid.UUID) -> None:
    """Remove the job and all of its data at once; a worker still running it finds nothing to finish."""
    async with tenant_transaction(engine, tenant_id) as conn:
        if (await conn.execute(repo.delete_job_stmt(tenant_id, job_id))).rowcount != 1:
            raise not_found()


async def load_masks(
    engine: AsyncEngine, tenant_id: uuid.UUID, job_id: uuid.UUID, index: int | None
) -> list[Any]:
    """The stored mask rows of a succeeded job (one, or all in prompt order); ``decode_masks`` them."""
    async with tenant_transaction(engine, tenant_id) as conn:
        row = await job_row(conn, tenant_id, job_id)
        if row["status"] != JobStatus.succeeded.value:
            raise ApiProblem(409, "job_not_succeeded", f"the job is {row['status']}; masks exist once it succeeded")
        # plain dicts: the rows travel to a decode process (pickled)
        mask_rows = [dict(m) for m in (await conn.execute(repo.select_mask_data(job_id, index))).mappings()]
    if not mask_rows:
        raise not_found("mask")
    if job_links.is_volume(row):  # a volume's masks are 3-D: served by gateway/results/handlers.py
        raise ApiProblem(
            409, "volume_result", "the job's masks are volumes; use result?format=npz or result?format=nifti"
        )
    return mask_rows


def decode_masks(mask_rows: list[Any]) -> list[Any]:
    """0/1 arrays of ``load_masks`` rows (CPU work: handlers run it off the event loop)."""
    return [masks.decode_mask(m["data"], m["height"], m["width"]) for m in mask_rows]


def mask_png_of(mask_rows: list[Any]) -> bytes:
    """The first row's mask as a 0/255 PNG (runs in a decode process)."""
    return masks.mask_png(decode_masks(mask_rows)[0])


def masks_npz_of(mask_rows: list[Any]) -> bytes:
    """All rows' masks as one .npz (runs in a decode process)."""
    return masks.masks_npz(np.stack(decode_masks(mask_rows)))


async def render_masks(
    decoder: DecodePool, tenant_id: uuid.UUID, render: Callable[[list[Any]], bytes], mask_rows: list[Any]
) -> bytes:
    """``render(mask_rows)`` in a decode process: 503 when none is free in time, 422 over its budget."""
    nbytes = sum(len(m["data"] or b"") for m in mask_rows)
    try:
        return await decoder.run(render, mask_rows, nbytes=nbytes, party=tenant_id)
    except DecodeBusy as exc:
        raise decode_busy_problem(exc) from None
    except DecodeLimitExceeded as exc:
        raise ApiProblem(422, exc.code, f"masks: {exc.message}") from None


async def readiness(engine: AsyncEngine, nudger: DispatchNudger) -> dict[str, str]:
    checks: dict[str, str] = {}
    try:
        async with engine.connect() as conn:
            await asyncio.wait_for(conn.execute(text("SELECT 1")), timeout=2)
        checks["database"] = "ok"
    except Exception as exc:  # any failure means not ready; the reason is for operators
        checks["database"] = f"unavailable: {type(exc).__name__}"
    checks["queue"] = await nudger.check()
    return checks
