"""Use cases of the job API. Each one opens exactly one transaction; handlers stay thin."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from db import jobs as repo
from db.status import CANCELABLE, JobStatus, is_terminal
from gateway.dispatch import JobPublisher
from gateway.events import JobEventListener
from gateway.problems import ApiProblem, field_error, not_found
from gateway.schemas import JobPublic
from gateway.submission import JobSubmission
from medparse import imaging, masks
from medparse.settings import Settings

#: Images up to this size are probed on the event loop: a thread hop costs more than the decode.
INLINE_PROBE_BYTES = 256 * 1024


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything we store is UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def job_url(job_id: uuid.UUID) -> str:
    return f"/v1/jobs/{job_id}"


def to_public(row: Mapping[Any, Any], mask_rows: Sequence[Mapping[Any, Any]] | None) -> JobPublic:
    error = None
    if row["error_code"]:
        error = {"code": row["error_code"], "message": row["error_message"] or ""}
    result = None
    if row["status"] == JobStatus.succeeded.value and mask_rows is not None:
        base = job_url(row["id"])
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
                    "url": f"{base}/masks/{m['index']}",
                }
                for m in mask_rows
            ],
            "npz_url": f"{base}/masks.npz",
            "provenance": row["result_meta"] or {},
        }
    return JobPublic.model_validate(
        {
            "id": row["id"],
            "status": row["status"],
            "prompts": row["prompts"],
            "options": row["options"],
            "created_at": as_utc(row["created_at"]),
            "started_at": as_utc(row["started_at"]),
            "completed_at": as_utc(row["completed_at"]),
            "attempts": row["attempts"],
            "error": error,
            "input": {
                "width": row["input_width"],
                "height": row["input_height"],
                "format": row["input_format"],
                "bytes": row["input_bytes"],
            },
            "result": result,
            "urls": {"get": job_url(row["id"]), "cancel": f"{job_url(row['id'])}/cancel"},
        }
    )


async def probe_upload(image: bytes, settings: Settings) -> imaging.ImageInfo:
    try:
        if len(image) <= INLINE_PROBE_BYTES:
            return imaging.probe_image(image, max_pixels=settings.max_image_pixels)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None, lambda: imaging.probe_image(image, max_pixels=settings.max_image_pixels)
        )
    except imaging.ImageRejected as exc:
        status = 413 if exc.code == "image_too_large" else (415 if exc.code == "unsupported_format" else 422)
        fields = [{"field": "image", "message": exc.message}]
        raise ApiProblem(status, exc.code, f"image: {exc.message}", fields=fields) from None


async def submit_job(
    engine: AsyncEngine,
    publisher: JobPublisher,
    settings: Settings,
    tenant_id: uuid.UUID,
    submission: JobSubmission,
) -> JobPublic:
    """Validate the image, commit the job and its bytes, then hand the id to the publisher."""
    if len(submission.image) > settings.max_body_bytes:
        raise ApiProblem(413, "payload_too_large", f"image: larger than {settings.max_body_bytes} bytes")
    info = await probe_upload(submission.image, settings)
    new = repo.NewJob(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        prompts=submission.prompts,
        options=submission.options.model_dump(mode="json", exclude_none=True),
        input_format=info.format,
        input_width=info.width,
        input_height=info.height,
        image=submission.image,
        now=utcnow(),
    )
    job_stmt, input_stmt = repo.insert_job_statements(new)
    async with engine.begin() as conn:
        await conn.execute(job_stmt)
        await conn.execute(input_stmt)
    # Published after the commit so a worker never sees an id it cannot read yet; if this is
    # lost (crash, broker down) the sweeper publishes the job again from Postgres.
    publisher.publish(str(new.id))
    row = {
        "id": new.id,
        "status": JobStatus.queued.value,
        "prompts": new.prompts,
        "options": new.options,
        "created_at": new.now,
        "started_at": None,
        "completed_at": None,
        "attempts": 0,
        "error_code": None,
        "error_message": None,
        "input_width": info.width,
        "input_height": info.height,
        "input_format": info.format,
        "input_bytes": len(submission.image),
        "result_width": None,
        "result_height": None,
        "result_meta": None,
    }
    return to_public(row, None)


async def get_job(engine: AsyncEngine, tenant_id: uuid.UUID, job_id: uuid.UUID) -> JobPublic:
    async with engine.connect() as conn:
        row = (await conn.execute(repo.select_job(tenant_id, job_id))).mappings().first()
        if row is None:
            raise not_found()
        mask_rows = None
        if row["status"] == JobStatus.succeeded.value:
            mask_rows = list((await conn.execute(repo.select_mask_summaries(job_id))).mappings())
    return to_public(row, mask_rows)


async def wait_for_job(
    engine: AsyncEngine,
    events: JobEventListener,
    tenant_id: uuid.UUID,
    job_id: uuid.UUID,
    seconds: float,
) -> JobPublic:
    """The job once it is terminal, or as it is after ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    with events.subscribe(str(job_id)) as changed:
        job = await get_job(engine, tenant_id, job_id)
        while not is_terminal(job.status):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await changed.wait(remaining)
            job = await get_job(engine, tenant_id, job_id)
    return job


def encode_cursor(job: JobPublic) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, _, job_id = base64.urlsafe_b64decode(padded).decode().partition("|")
        when = datetime.fromisoformat(created)
        return (when if when.tzinfo else when.replace(tzinfo=UTC)), uuid.UUID(job_id)
    except (ValueError, UnicodeDecodeError):
        raise field_error("cursor", "not a cursor returned by this API", status=400) from None


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
    async with engine.connect() as conn:
        rows = list((await conn.execute(stmt)).mappings())
    # List items carry no result; fetch the job itself for its masks.
    jobs = [to_public(r, None) for r in rows[:limit]]
    next_cursor = encode_cursor(jobs[-1]) if len(rows) > limit and jobs else None
    return jobs, next_cursor


async def cancel_job(engine: AsyncEngine, tenant_id: uuid.UUID, job_id: uuid.UUID) -> JobPublic:
    async with engine.begin() as conn:
        row = (await conn.execute(repo.select_job(tenant_id, job_id))).mappings().first()
        if row is None:
            raise not_found()
        current = JobStatus(row["status"])
        if current not in CANCELABLE:
            raise ApiProblem(409, "job_not_cancelable", f"the job is already {current}")
        now = utcnow()
        stmt = repo.transition_stmt(
            job_id, current, JobStatus.canceled, now=now, tenant_id=tenant_id, completed_at=now,
            lease_expires_at=None,
        )
        try:
            await repo.transition(conn, stmt)
        except repo.StaleTransition:
            raise ApiProblem(409, "job_changed", "the job changed state meanwhile; fetch it and retry") from None
    return await get_job(engine, tenant_id, job_id)


async def load_masks(
    engine: AsyncEngine, tenant_id: uuid.UUID, job_id: uuid.UUID, index: int | None
) -> list[Any]:
    """Decoded 0/1 masks of a succeeded job (one, or all in prompt order)."""
    async with engine.connect() as conn:
        row = (await conn.execute(repo.select_job(tenant_id, job_id))).mappings().first()
        if row is None:
            raise not_found()
        if row["status"] != JobStatus.succeeded.value:
            raise ApiProblem(409, "job_not_succeeded", f"the job is {row['status']}; masks exist once it succeeded")
        mask_rows = list((await conn.execute(repo.select_mask_data(job_id, index))).mappings())
    if not mask_rows:
        raise not_found("mask")
    return [masks.decode_mask(m["data"], m["height"], m["width"]) for m in mask_rows]


async def readiness(engine: AsyncEngine, publisher: JobPublisher) -> dict[str, str]:
    checks: dict[str, str] = {}
    try:
        async with engine.connect() as conn:
            await asyncio.wait_for(conn.execute(text("SELECT 1")), timeout=2)
        checks["database"] = "ok"
    except Exception as exc:  # any failure means not ready; the reason is for operators
        checks["database"] = f"unavailable: {type(exc).__name__}"
    checks["queue"] = await publisher.check()
    return checks


def guard_integrity(exc: IntegrityError) -> ApiProblem:
    return ApiProblem(409, "conflict", "the request conflicts with existing data")
