"""Use cases of the job API. Each one opens exactly one transaction; handlers stay thin."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from db import jobs as repo
from db.job_record import Job, MaskSummary
from db.job_snapshot import decode_snapshot
from db.outbox import record_transition_async
from db.status import CANCELABLE, JobStatus, is_terminal
from gateway import idempotency
from gateway.deps import GatewayDeps, Store
from gateway.errors import (
    Conflict,
    DomainError,
    InvalidField,
    JobNotFound,
    NotCancelable,
    PayloadTooLarge,
    QuotaExceeded,
    Unprocessable,
    UnsupportedFormat,
    decode_busy,
)
from gateway.jobs import medical
from gateway.jobs.schemas import JobPublic
from gateway.jobs.submission_model import JobSubmission
from gateway.jobs.writer import PendingJob
from gateway.principals import Principal
from gateway.tenancy import QueuedJobsGauge, check_storage_quota, tenant_transaction
from gateway.webhooks.services import attach_job_webhook
from medparse import imaging, job_links
from medparse.decode_pool import DecodeBusy, DecodePool, decodes_inline
from medparse.medical.errors import OptionRejected
from medparse.settings import Settings

T = TypeVar("T")

#: Images up to this size are probed (and hashed) on the event loop: a thread hop costs more.
INLINE_PROBE_BYTES = 256 * 1024


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_public(job: Job, masks: Sequence[MaskSummary] | None) -> JobPublic:
    """The job's JSON; ``masks``: a succeeded job's mask summaries (None: the result is left out)."""
    error = None
    if job.error_code:
        error = {"code": job.error_code, "message": job.error_message or ""}
    result = None
    if job.succeeded and masks is not None:
        result = {
            "width": job.result_width,
            "height": job.result_height,
            "masks": [
                {
                    "index": m.index,
                    "prompt": m.prompt,
                    "label": m.label,
                    "area_px": m.area_px,
                    "bbox": m.bbox,
                    "url": job_links.mask_path(job.id, m.index, volume=job.is_volume),
                }
                for m in masks
            ],
            "npz_url": job_links.npz_path(job.id, volume=job.is_volume),
            "provenance": job.result_meta or {},
        }
    return JobPublic.model_validate(
        medical.public_extras(job, {  # DICOM/NIfTI details, progress, result formats (gateway/jobs/medical.py)
            "id": job.id,
            "status": job.status,
            "prompts": job.prompts,
            "options": job.options,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "completed_at": job.completed_at,
            "attempts": job.attempts,
            "priority": job.priority,
            "error": error,
            "input": {
                "width": job.input_width,
                "height": job.input_height,
                "format": job.input_format,
                "bytes": job.input_bytes,
            },
            "result": result,
            "urls": {"get": job_links.job_path(job.id), "cancel": f"{job_links.job_path(job.id)}/cancel"},
        })
    )


async def _off_the_loop_if_large(size: int, work: Callable[[], T]) -> T:
    """``work()`` on the event loop for an image up to INLINE_PROBE_BYTES, else in a thread (hashing)."""
    if size <= INLINE_PROBE_BYTES:
        return work()
    return await asyncio.to_thread(work)


def image_rejected_error(exc: imaging.ImageRejected) -> DomainError:
    """413 ``image_too_large``, 415 ``unsupported_format``, else 422, naming the ``image`` field."""
    kind: type[DomainError] = (
        PayloadTooLarge if exc.code == "image_too_large"
        else UnsupportedFormat if exc.code == "unsupported_format" else Unprocessable
    )
    return kind(f"image: {exc.message}", code=exc.code, fields=[{"field": "image", "message": exc.message}])


async def probe_upload(
    image: bytes, settings: Settings, decoder: DecodePool, options: Mapping[str, Any] | None = None,
    tenant_id: uuid.UUID | None = None,
) -> imaging.ImageInfo:
    """The upload's ImageInfo; domain errors naming ``image`` (or the option) otherwise.

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
        raise decode_busy(exc.retry_after_s, exc.message) from None
    except imaging.ImageRejected as exc:
        raise image_rejected_error(exc) from None
    except OptionRejected as exc:  # e.g. frame 7 of a 2-frame DICOM
        raise InvalidField(exc.field, exc.message, code="invalid_option") from None


@dataclass(frozen=True)
class Submitted:
    """A new job, or (for a repeated Idempotency-Key) the first request's stored answer."""

    job: JobPublic | None
    replay: idempotency.StoredAnswer | None = None


@dataclass(frozen=True)
class _KeyedRequest:
    """A submission's Idempotency-Key and what the request asks for, as a fingerprint."""

    key: str
    fingerprint: str


async def submit_job(
    deps: GatewayDeps, who: Principal, submission: JobSubmission, idempotency_key: str | None
) -> Submitted:
    """Validate the image, then commit the job and its bytes in one transaction (shared with concurrent
    submissions: gateway/jobs/writer.py) in which its Idempotency-Key is claimed and its answer stored
    and the queued-jobs quota holds; then nudge dispatch (the use case's one side effect)."""
    if len(submission.image) > who.quotas.max_image_bytes:
        raise PayloadTooLarge(
            f"image: larger than this tenant's {who.quotas.max_image_bytes} bytes",
            code="payload_too_large", fields=[{"field": "image", "message": "too large"}],
        )
    keyed = None
    if idempotency_key is not None:
        image = submission.image
        digest = await _off_the_loop_if_large(len(image), lambda: hashlib.sha256(image).hexdigest())
        keyed = _KeyedRequest(
            idempotency_key, idempotency.fingerprint("POST /v1/jobs", *submission.fingerprint_parts(digest))
        )
        # A retry of an answered request is answered before the decode (one read); the claim in the
        # job's transaction stays the decision (a duplicate that is still on its way, say).
        stored = await idempotency.stored_answer(deps.engine, who.tenant_id, keyed.key, keyed.fingerprint)
        if stored is not None:
            return Submitted(job=None, replay=stored)
    outcome = await _insert_job(deps, who, submission, keyed)
    if isinstance(outcome, idempotency.StoredAnswer):
        return Submitted(job=None, replay=outcome)
    deps.nudger.nudge()
    return Submitted(job=outcome)


async def _insert_job(
    deps: GatewayDeps, who: Principal, submission: JobSubmission, keyed: _KeyedRequest | None
) -> JobPublic | idempotency.StoredAnswer:
    """The new job, or the stored answer of the request that claimed the key first."""
    settings, gauge = deps.settings, deps.queued_gauge
    options = submission.options.model_dump(mode="json", exclude_none=True)
    # Before the probe, and not again in the transaction: a tenant whose store is full costs no decode.
    # Soft: submissions in flight at once may overshoot by their own size (gateway/tenancy.py).
    await check_storage_quota(
        deps.engine, who.tenant_id, who.quotas.max_stored_bytes, len(submission.image), gauge.stored_bytes
    )
    info = await probe_upload(submission.image, settings, deps.decode_pool, options, who.tenant_id)
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
    job = to_public(new.as_job(), None)
    count_queued = _check_queued_quota(who, gauge, deps.writer.unsettled(who.tenant_id))
    # Built before the transaction, which other submissions may share (gateway/jobs/writer.py).
    answer = job_created_answer(job) if keyed is not None else None

    async def admit(conn: AsyncConnection, admitted_before: int) -> idempotency.StoredAnswer | None:
        # The quota first: a refusal must write nothing (writer.Admission), and a claim is a write.
        if count_queued:
            await _count_queued_in(conn, who, gauge, admitted_before)
        if keyed is not None:
            claimed = await idempotency.claim_in(conn, settings, who.tenant_id, keyed.key, keyed.fingerprint)
            if isinstance(claimed, idempotency.StoredAnswer):
                return claimed
        return None

    async def in_same_transaction(conn: AsyncConnection) -> None:
        await attach_job_webhook(conn, who.tenant_id, new.id, submission.webhook)  # gateway/webhooks/services.py
        if keyed is not None and answer is not None:
            # Stored in the job's own transaction: a retry after a crash finds the job, never a second one.
            reservation = idempotency.Reservation(who.tenant_id, keyed.key)
            await idempotency.complete_in(conn, reservation, answer, job_id=new.id)

    job_params, input_params = repo.insert_job_params(new)
    needs_more = submission.webhook is not None or keyed is not None
    # No await between the quota's fast path above and this write: the job counts as unsettled at once.
    replay = await deps.writer.write(PendingJob(
        who.tenant_id, job_params, input_params, in_same_transaction if needs_more else None,
        admit=admit if count_queued or keyed is not None else None,
        after_commit=lambda: gauge.added(who.tenant_id),
    ))
    if isinstance(replay, idempotency.StoredAnswer):
        return replay
    return job


def _check_queued_quota(who: Principal, gauge: QueuedJobsGauge, unsettled: int) -> bool:
    """The fast path of the queued-jobs quota, from ``gauge``'s estimate plus the tenant's
    ``unsettled`` submissions (written, not committed yet): QuotaExceeded (429) when it says the queue
    is full; True when there is no estimate good enough (near the quota, or none recent): then the
    job's transaction counts (``_count_queued_in``)."""
    quota = who.quotas.max_queued_jobs
    queued = gauge.estimate(who.tenant_id, quota, pending=unsettled)
    if queued is None:
        return True
    if queued >= quota:
        raise _queue_full(queued, quota)
    return False


async def _count_queued_in(conn: AsyncConnection, who: Principal, gauge: QueuedJobsGauge, admitted_before: int) -> None:
    """The queued-jobs quota in the job's transaction, counting the tenant's jobs this transaction
    admitted before this one. Still soft across transactions: concurrent ones (another gateway
    process, say) may overshoot by their own jobs."""
    quota = who.quotas.max_queued_jobs
    queued = (await conn.execute(repo.COUNT_QUEUED, {"tenant_id": who.tenant_id})).scalar_one()
    gauge.counted(who.tenant_id, queued)  # the jobs admitted before (and the unsettled) add themselves once committed
    if queued + admitted_before >= quota:
        raise _queue_full(queued + admitted_before, quota)


def _queue_full(queued: int, quota: int) -> QuotaExceeded:
    return QuotaExceeded(
        f"this tenant already has {queued} queued jobs (limit {quota}); retry when some have started",
        code="queued_jobs_quota_exceeded", retry_after="30",
    )


def job_created_answer(job: JobPublic) -> idempotency.StoredAnswer:
    """The 202 answer to a submission, as stored for a replay (what ``create_job`` sends, bar
    ``Prefer: wait``): the job as submitted, its Location and Content-Type."""
    return idempotency.StoredAnswer(
        202, {"Location": job.urls.get, "Content-Type": "application/json"}, orjson.dumps(job.model_dump(mode="json"))
    )


async def get_job(store: Store, tenant_id: uuid.UUID, job_id: uuid.UUID) -> JobPublic:
    async with tenant_transaction(store.engine, tenant_id) as conn:
        job = await repo.read_job(conn, tenant_id, job_id)
        if job is None:
            raise JobNotFound()
        masks = await repo.read_mask_summaries(conn, job_id) if job.succeeded else None
    return to_public(job, masks)


async def wait_for_job(
    deps: GatewayDeps, tenant_id: uuid.UUID, job_id: uuid.UUID, seconds: float, known: JobPublic | None = None
) -> JobPublic:
    """The job once it is terminal, or as it is after ``seconds``.

    ``known``: the job as the caller has just written it, with no await since (so no notification
    can have been missed; the dispatchers were only nudged): the first read is skipped.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    with deps.events.subscribe(str(job_id)) as changed:
        job = known if known is not None else await get_job(deps, tenant_id, job_id)
        while not is_terminal(job.status):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await changed.wait(remaining)
            job = _from_snapshot(changed.snapshot, tenant_id, job_id) or await get_job(deps, tenant_id, job_id)
    return job


def _from_snapshot(snapshot: bytes | None, tenant_id: uuid.UUID, job_id: uuid.UUID) -> JobPublic | None:
    """The terminal job a worker's notification carried (as committed), instead of a read."""
    if snapshot is None:
        return None
    job, masks = decode_snapshot(snapshot)
    if job.id != job_id or job.tenant_id != tenant_id or not job.is_terminal:
        return None
    return to_public(job, masks if job.succeeded else None)


async def list_jobs(
    store: Store,
    tenant_id: uuid.UUID,
    *,
    status: JobStatus | None,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
) -> tuple[list[JobPublic], tuple[datetime, uuid.UUID] | None]:
    """Newest first, after the (created_at, id) ``after``; with the (created_at, id) to continue from,
    if there are more. List items carry no result: fetch the job itself for its masks."""
    async with tenant_transaction(store.engine, tenant_id) as conn:
        found = await repo.list_jobs(conn, tenant_id, status=status, limit=limit + 1, after=after)
    jobs = [to_public(job, None) for job in found[:limit]]
    more = (jobs[-1].created_at, jobs[-1].id) if len(found) > limit and jobs else None
    return jobs, more


async def cancel_job(deps: GatewayDeps, tenant_id: uuid.UUID, job_id: uuid.UUID) -> JobPublic:
    """queued/running -> canceled, its webhook event in the same transaction; waiters are told after the commit."""
    async with tenant_transaction(deps.engine, tenant_id) as conn:
        job = await repo.read_job(conn, tenant_id, job_id)
        if job is None:
            raise JobNotFound()
        if job.status not in CANCELABLE:
            raise NotCancelable(f"the job is already {job.status}", code="job_not_cancelable")
        changed = await repo.cancel(conn, job, now=utcnow())
        if changed is None:
            raise Conflict("the job changed state meanwhile; fetch it and retry", code="job_changed")
        canceled, row = changed
        await record_transition_async(conn, job_id, JobStatus.canceled, row)  # webhook outbox, same transaction
    await deps.events.announce(str(job_id))
    return to_public(canceled, None)  # canceled: no result to read


async def delete_job(deps: GatewayDeps, tenant_id: uuid.UUID, job_id: uuid.UUID) -> None:
    """Remove the job and all of its data at once; a worker still running it finds nothing to finish,
    and waiters are told after the commit."""
    async with tenant_transaction(deps.engine, tenant_id) as conn:
        if not await repo.delete_job(conn, tenant_id, job_id):
            raise JobNotFound()
    await deps.events.announce(str(job_id))


async def readiness(deps: GatewayDeps) -> dict[str, str]:
    """Whether the database answers and the queue is reachable, each with an operator's reason."""
    checks: dict[str, str] = {}
    try:
        async with deps.engine.connect() as conn:
            await asyncio.wait_for(conn.execute(text("SELECT 1")), timeout=2)
        checks["database"] = "ok"
    except Exception as exc:  # any failure means not ready; the reason is for operators
        checks["database"] = f"unavailable: {type(exc).__name__}"
    checks["queue"] = await deps.nudger.check()
    return checks
