"""The outbox: webhook events are rows written in the SAME transaction as the job's status change.

A crash after the commit cannot lose an event (the row is there, the dispatcher sends it), and a
rolled-back status change leaves no event behind. One row per job event per target endpoint;
its id is the ``webhook-id`` every retry carries. The unique (job_id, event_type, target)
constraint turns a repeated event into a no-op.

Hooks are one line in the callers' transactions::

    record_transition(conn, job_id, JobStatus.succeeded)            # sync Connection (workers)
    await record_transition_async(conn, job_id, JobStatus.canceled)  # AsyncConnection (gateway)
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from db import jobs as jobs_repo
from db import webhooks as repo
from db.delivery_status import INITIAL
from db.job_record import Job, MaskSummary
from db.status import JobStatus
from medparse.job_links import job_path
from medparse.webhooks.events import EventType
from medparse.webhooks.payload import build_payload

log = logging.getLogger(__name__)

#: Which job status raises which webhook event (a retried attempt's running does not: see below).
EVENT_FOR_STATUS: dict[JobStatus, EventType] = {
    JobStatus.running: EventType.started,
    JobStatus.succeeded: EventType.succeeded,
    JobStatus.failed: EventType.failed,
    JobStatus.canceled: EventType.canceled,
}


def webhook_id(delivery_id: uuid.UUID) -> str:
    """The ``webhook-id`` header of a delivery: stable across retries and replays."""
    return f"msg_{delivery_id.hex}"


def _targets(conn: Connection, job: Any, event: EventType) -> list[tuple[str, uuid.UUID | None]]:
    targets: list[tuple[str, uuid.UUID | None]] = []
    if job["webhook_url"] is not None and job["webhook_disabled_at"] is None and event in job["webhook_events"]:
        targets.append((repo.JOB_TARGET, None))
    if not job["tenant_has_endpoints"]:  # the usual case: no second query per status change
        return targets
    for endpoint_id, event_types in conn.execute(repo.enabled_endpoints_for_tenant(job["tenant_id"])):
        if event_types is None or event in event_types:
            targets.append((str(endpoint_id), endpoint_id))
    return targets


def _payload(
    conn: Connection, job: Any, event: EventType, now: datetime, masks: Sequence[Mapping[Any, Any]] | None
) -> dict[str, Any]:
    if masks is None:
        masks = []
        if job["status"] == JobStatus.succeeded.value:
            masks = list(conn.execute(jobs_repo.SELECT_MASK_SUMMARIES, {"job_id": job["id"]}).mappings())
    try:
        return build_payload(event.value, Job.from_row(job), [MaskSummary.from_row(m) for m in masks], now)
    except Exception:  # a payload bug must never block the job's own status change
        log.exception("webhook payload for job %s (%s) fell back to the minimal form", job["id"], event)
        return {"type": event.value, "timestamp": now.isoformat(),
                "data": {"id": str(job["id"]), "status": job["status"], "urls": {"get": job_path(job["id"])}}}


def record_job_event(
    conn: Connection,
    job_id: uuid.UUID,
    event: EventType | str,
    masks: Sequence[Mapping[Any, Any]] | None = None,
    job: Mapping[Any, Any] | None = None,
) -> int:
    """Write one delivery row per subscribed target of ``job_id``'s ``event``; returns how many
    targets are subscribed. Call it inside the transaction that changed the job's status.
    ``masks``: the succeeded job's mask rows when the caller has them (else they are read).
    ``job``: the changed row with ``db.webhooks.OUTBOX_COLUMNS``, as the status change RETURNed it
    (else it is read); with it, a job nobody listens to costs no I/O here."""
    event = EventType(event)
    if job is None:
        job = conn.execute(repo.SELECT_JOB_WITH_WEBHOOK, {"job_id": job_id}).mappings().first()
        if job is None:
            return 0
    targets = _targets(conn, job, event)
    if not targets:
        return 0
    now = datetime.now(UTC)
    payload = _payload(conn, job, event, now, masks)
    rows = [
        {
            "id": uuid.uuid4(), "tenant_id": job["tenant_id"], "job_id": job_id, "endpoint_id": endpoint_id,
            "target": target, "event_type": event.value, "payload": payload, "status": INITIAL.value,
            "attempts": 0, "failures": 0, "next_attempt_at": now, "created_at": now, "updated_at": now,
        }
        for target, endpoint_id in targets
    ]
    repo.insert_deliveries(conn, rows)
    return len(rows)


def record_transition(
    conn: Connection,
    job_id: uuid.UUID,
    status: JobStatus | str,
    masks: Sequence[Mapping[Any, Any]] | None = None,
    job: Mapping[Any, Any] | None = None,
) -> int:
    """``record_job_event`` for the event a job entering ``status`` raises (none for ``queued``)."""
    event = EVENT_FOR_STATUS.get(JobStatus(status))
    return 0 if event is None else record_job_event(conn, job_id, event, masks, job)


async def record_transition_async(
    conn: AsyncConnection, job_id: uuid.UUID, status: JobStatus | str, job: Mapping[Any, Any] | None = None
) -> int:
    return await conn.run_sync(record_transition, job_id, status, None, job)
