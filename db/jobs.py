"""Job repository: SQL statements over ``jobs``, ``job_inputs`` and ``job_masks``.

Statements are built here and executed by the caller's transaction (the gateway's async
connection or a worker's sync connection); nothing in this module commits. Every read that
comes from the API is scoped by tenant. Every status change goes through ``transition_stmt``:
a compare-and-set UPDATE checked against the state machine in ``db.status``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    LargeBinary,
    RowMapping,
    Select,
    Table,
    Update,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from db import job_record
from db.models import Job, JobInput, JobMask
from db.status import JobStatus, check_transition
from db.webhooks import OUTBOX_COLUMNS

JOB_COLUMNS = [c for c in Job.__table__.c]
MASK_SUMMARY_COLUMNS = [
    JobMask.index, JobMask.prompt, JobMask.label, JobMask.area_px, JobMask.bbox, JobMask.height, JobMask.width
]


class StaleTransition(Exception):
    """The job was not in the expected state any more: someone else moved it first."""


@dataclass(frozen=True)
class NewJob:
    id: uuid.UUID
    tenant_id: uuid.UUID
    prompts: list[str]
    options: dict[str, Any]
    input_format: str
    input_width: int
    input_height: int
    image: bytes
    now: datetime
    priority: int = 0
    #: DICOM/NIfTI details from the submit-time probe (medparse.medical.inputs)
    input_meta: dict[str, Any] | None = None

    def as_job(self) -> job_record.Job:
        """The job as ``INSERT_JOB`` stores it (with ``insert_job_params``), before any read."""
        return job_record.Job(
            id=self.id, tenant_id=self.tenant_id, status=JobStatus.queued, prompts=self.prompts,
            options=self.options, input_format=self.input_format, input_width=self.input_width,
            input_height=self.input_height, input_bytes=len(self.image), created_at=self.now, updated_at=self.now,
            dispatched_at=None, started_at=None, completed_at=None, attempts=0, priority=self.priority,
            prompt_count=len(self.prompts), endpoint_calls=0, endpoint_seconds=0.0, lease_expires_at=None,
            error_code=None, error_message=None, result_width=None, result_height=None, result_meta=None,
            input_meta=self.input_meta, progress=None,
        )


_NEW_JOB_COLUMNS = (
    "id", "tenant_id", "status", "prompts", "options", "input_format", "input_width", "input_height",
    "input_bytes", "created_at", "updated_at", "dispatched_at", "attempts", "priority", "prompt_count",
    "input_meta",
)
_jobs_table = cast(Table, Job.__table__)
_inputs_table = cast(Table, JobInput.__table__)
#: The two rows of a new job as Core statements built once: SQLAlchemy then neither rebuilds an
#: insert nor recomputes its cache key per job (~0.2-0.3 ms of CPU per submission). Two
#: statements, not one CTE: job_inputs' row-level security policy must see the jobs row.
INSERT_JOB = insert(_jobs_table).values(
    {name: bindparam(name, type_=_jobs_table.c[name].type) for name in _NEW_JOB_COLUMNS}
)
INSERT_JOB_INPUT = insert(_inputs_table).values(
    job_id=bindparam("job_id", type_=_inputs_table.c.job_id.type), data=bindparam("data", type_=LargeBinary)
)


def insert_job_params(job: NewJob) -> tuple[dict[str, Any], dict[str, Any]]:
    """Parameters of ``INSERT_JOB`` and ``INSERT_JOB_INPUT``.

    dispatched_at stays NULL: the workers' fair dispatcher publishes the job when its turn comes.
    """
    job_row = {
        "id": job.id, "tenant_id": job.tenant_id, "status": JobStatus.queued.value, "prompts": job.prompts,
        "options": job.options, "input_format": job.input_format, "input_width": job.input_width,
        "input_height": job.input_height, "input_bytes": len(job.image), "created_at": job.now,
        "updated_at": job.now, "dispatched_at": None, "attempts": 0, "priority": job.priority,
        "prompt_count": len(job.prompts), "input_meta": job.input_meta,
    }
    return job_row, {"job_id": job.id, "data": job.image}


def insert_job_statements(job: NewJob) -> tuple[Any, Any]:
    """The same two rows as executable statements (for callers without a parameter dict)."""
    job_row, input_row = insert_job_params(job)
    return INSERT_JOB.values(job_row), INSERT_JOB_INPUT.values(input_row)


#: A tenant's job, and a job's mask summaries in prompt order, built once (parameters ``job_id``,
#: ``tenant_id``): building a select and its cache key costs more than running it.
SELECT_JOB = select(*JOB_COLUMNS).where(
    Job.id == bindparam("job_id", type_=Job.id.type), Job.tenant_id == bindparam("tenant_id", type_=Job.tenant_id.type)
)
SELECT_MASK_SUMMARIES = (
    select(*MASK_SUMMARY_COLUMNS).where(JobMask.job_id == bindparam("job_id", type_=JobMask.job_id.type))
    .order_by(JobMask.index)
)


#: A tenant's queued jobs (parameter ``tenant_id``), built once: it runs on the submit path.
COUNT_QUEUED = select(func.count()).select_from(Job).where(
    Job.tenant_id == bindparam("tenant_id", type_=Job.tenant_id.type), Job.status == JobStatus.queued.value
)


async def read_job(conn: AsyncConnection, tenant_id: uuid.UUID, job_id: uuid.UUID) -> job_record.Job | None:
    """The tenant's job, or None when there is none (or it is another tenant's)."""
    row = (await conn.execute(SELECT_JOB, {"job_id": job_id, "tenant_id": tenant_id})).mappings().first()
    return None if row is None else job_record.Job.from_row(row)


async def read_mask_summaries(conn: AsyncConnection, job_id: uuid.UUID) -> list[job_record.MaskSummary]:
    """A job's mask summaries in prompt order (none before it succeeded)."""
    rows = (await conn.execute(SELECT_MASK_SUMMARIES, {"job_id": job_id})).mappings()
    return [job_record.MaskSummary.from_row(m) for m in rows]


async def read_stored_masks(
    conn: AsyncConnection, job_id: uuid.UUID, index: int | None = None
) -> list[job_record.StoredMask]:
    """A job's stored 2-D masks with their bytes (one, or all in prompt order)."""
    rows = (await conn.execute(select_mask_data(job_id, index))).mappings()
    return [job_record.StoredMask.from_row(m) for m in rows]


async def read_input(conn: AsyncConnection, job_id: uuid.UUID) -> bytes | None:
    """The job's upload; None when retention deleted it."""
    data: bytes | None = (await conn.execute(select_input(job_id))).scalar_one_or_none()
    return data


async def list_jobs(
    conn: AsyncConnection,
    tenant_id: uuid.UUID,
    *,
    status: JobStatus | None,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
) -> list[job_record.Job]:
    """``list_jobs_stmt``'s page as jobs."""
    stmt = list_jobs_stmt(tenant_id, status=status, limit=limit, after=after)
    return [job_record.Job.from_row(row) for row in (await conn.execute(stmt)).mappings()]


async def cancel(
    conn: AsyncConnection, job: job_record.Job, *, now: datetime
) -> tuple[job_record.Job, RowMapping] | None:
    """``job.status -> canceled`` as a compare-and-set; the changed job and its row (with the outbox's
    ``OUTBOX_COLUMNS``), or None when the job changed state meanwhile."""
    stmt = transition_stmt(
        job.id, job.status, JobStatus.canceled, now=now, tenant_id=job.tenant_id, completed_at=now,
        lease_expires_at=None,
    )
    changed = (await conn.execute(stmt.returning(*JOB_COLUMNS, *OUTBOX_COLUMNS))).mappings().first()
    return None if changed is None else (job_record.Job.from_row(changed), changed)


async def delete_job(conn: AsyncConnection, tenant_id: uuid.UUID, job_id: uuid.UUID) -> bool:
    """Whether the tenant's job existed (and is now gone, with everything of it)."""
    return bool((await conn.execute(delete_job_stmt(tenant_id, job_id))).rowcount == 1)


def select_mask_data(job_id: uuid.UUID, index: int | None = None) -> Select[Any]:
    stmt = select(JobMask.index, JobMask.height, JobMask.width, JobMask.encoding, JobMask.data).where(
        JobMask.job_id == job_id
    )
    if index is not None:
        stmt = stmt.where(JobMask.index == index)
    return stmt.order_by(JobMask.index)


def select_input(job_id: uuid.UUID) -> Select[Any]:
    return select(JobInput.data).where(JobInput.job_id == job_id)


def list_jobs_stmt(
    tenant_id: uuid.UUID,
    *,
    status: JobStatus | None,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
) -> Select[Any]:
    """Newest first; ``after`` is the (created_at, id) of the last row of the previous page."""
    stmt = select(*JOB_COLUMNS).where(Job.tenant_id == tenant_id)
    if status is not None:
        stmt = stmt.where(Job.status == status.value)
    if after is not None:
        created_at, job_id = after
        stmt = stmt.where(
            or_(Job.created_at < created_at, and_(Job.created_at == created_at, Job.id < job_id))
        )
    return stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)


def transition_stmt(
    job_id: uuid.UUID | ColumnElement[Any],
    expected: JobStatus,
    target: JobStatus,
    *,
    now: datetime | ColumnElement[Any],
    tenant_id: uuid.UUID | None = None,
    attempt: int | ColumnElement[Any] | None = None,
    **values: Any,
) -> Update:
    """``UPDATE jobs SET status=target ... WHERE id=? AND status=expected`` (plus guards).

    ``attempt`` pins the update to one claim, so a worker whose lease was taken away cannot
    finish the job that a later attempt now owns.
    """
    check_transition(expected, target)
    conditions = [Job.id == job_id, Job.status == expected.value]
    if tenant_id is not None:
        conditions.append(Job.tenant_id == tenant_id)
    if attempt is not None:
        conditions.append(Job.attempts == attempt)
    return update(Job).where(*conditions).values(status=target.value, updated_at=now, **values)


def transition_sync(conn: Connection, stmt: Update, params: dict[str, Any] | None = None) -> Any:
    """Run a compare-and-set UPDATE; StaleTransition when it changed no row (the job moved on).

    Returns the changed row (a mapping) for a statement with RETURNING, else None.
    """
    result = conn.execute(stmt, params)
    if result.returns_rows:
        row = result.mappings().first()
        if row is None:
            raise StaleTransition()
        return row
    if result.rowcount != 1:
        raise StaleTransition()
    return None


def _param(column: Any) -> Any:
    # A bind parameter may not share its name with a column the UPDATE sets.
    return bindparam(f"new_{column.key}", type_=column.type)


#: The three status changes a worker makes, built once: they run for every job, and building an
#: UPDATE with its RETURNING subqueries (and its cache key) costs more than running it. Each
#: returns the whole row with ``OUTBOX_COLUMNS`` (db/webhooks.py): the outbox then reads nothing.
#: CLAIM: queued -> running, counting the attempt; RETURNING the row (with the new attempt number)
#: and the job's image (one round trip). Parameters: ``job_id``, ``now``, ``lease_until``.
_JOB_ID = bindparam("job_id", type_=Job.id.type)
_NOW = bindparam("now", type_=Job.updated_at.type)
CLAIM = transition_stmt(
    _JOB_ID, JobStatus.queued, JobStatus.running, now=_NOW, started_at=_NOW,
    lease_expires_at=bindparam("lease_until", type_=Job.lease_expires_at.type),
    attempts=Job.attempts + 1,
).returning(
    Job.attempts,  # first: the attempt number is the claim's answer (``scalar_one()``)
    *(column for column in JOB_COLUMNS if column.key != "attempts"),
    select(JobInput.data).where(JobInput.job_id == Job.id).scalar_subquery().label("image"),
    *OUTBOX_COLUMNS,
)
_ATTEMPT = bindparam("attempt", type_=Job.attempts.type)
_USAGE: dict[str, Any] = {  # this attempt's endpoint calls and seconds, added to the job's totals
    "endpoint_calls": Job.endpoint_calls + bindparam("calls", type_=Job.endpoint_calls.type),
    "endpoint_seconds": Job.endpoint_seconds + bindparam("seconds", type_=Job.endpoint_seconds.type),
}
#: running -> succeeded for one attempt, RETURNING the whole row. Parameters: ``job_id``, ``attempt``,
#: ``now``, ``new_result_width``, ``new_result_height``, ``new_result_meta``, ``calls``, ``seconds``.
SUCCEED = transition_stmt(
    _JOB_ID, JobStatus.running, JobStatus.succeeded, now=_NOW, attempt=_ATTEMPT, completed_at=_NOW,
    lease_expires_at=None, result_width=_param(Job.result_width), result_height=_param(Job.result_height),
    result_meta=_param(Job.result_meta), error_code=None, error_message=None, **_USAGE,
).returning(*JOB_COLUMNS, *OUTBOX_COLUMNS)
#: running -> failed for one attempt, RETURNING the whole row. Parameters: ``job_id``, ``attempt``,
#: ``now``, ``new_error_code``, ``new_error_message``, ``calls``, ``seconds``.
FAIL = transition_stmt(
    _JOB_ID, JobStatus.running, JobStatus.failed, now=_NOW, attempt=_ATTEMPT, completed_at=_NOW,
    lease_expires_at=None, error_code=_param(Job.error_code), error_message=_param(Job.error_message), **_USAGE,
).returning(*JOB_COLUMNS, *OUTBOX_COLUMNS)


def claim_params(job_id: uuid.UUID, *, now: datetime, lease_until: datetime) -> dict[str, Any]:
    """The parameters of ``CLAIM``."""
    return {"job_id": job_id, "now": now, "lease_until": lease_until}


def extend_lease_stmt(job_id: uuid.UUID, attempt: int, *, lease_until: datetime) -> Update:
    return (
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.running.value, Job.attempts == attempt)
        .values(lease_expires_at=lease_until)
    )


def delete_job_stmt(tenant_id: uuid.UUID, job_id: uuid.UUID) -> Any:
    """Everything of a job goes with it: input, masks, idempotency record, webhook rows (ON DELETE CASCADE)."""
    return delete(Job).where(Job.id == job_id, Job.tenant_id == tenant_id)


def delete_input_stmt(job_id: uuid.UUID) -> Any:
    return delete(JobInput).where(JobInput.job_id == job_id)


def purge_finished_stmt(*, completed_before: datetime, limit: int) -> Any:
    terminal = [JobStatus.succeeded.value, JobStatus.failed.value, JobStatus.canceled.value]
    doomed = (
        select(Job.id)
        .where(Job.status.in_(terminal), Job.completed_at < completed_before)
        .limit(limit)
        .scalar_subquery()
    )
    return delete(Job).where(Job.id.in_(doomed))


#: Executed with one parameter dict per mask (an executemany: one round trip, one cached statement).
INSERT_MASKS = insert(JobMask)


def expired_leases_stmt(*, now: datetime, limit: int) -> Select[Any]:
    return (
        select(Job.id, Job.attempts)
        .where(Job.status == JobStatus.running.value, Job.lease_expires_at < now)
        .limit(limit)
    )


def undispatch_stale_stmt(*, dispatched_before: datetime) -> Update:
    """Queued jobs published long ago but never claimed (message lost) go back to the dispatcher."""
    return (
        update(Job)
        .where(
            Job.status == JobStatus.queued.value,
            Job.dispatched_at.is_not(None),
            Job.dispatched_at < dispatched_before,
        )
        .values(dispatched_at=None)
        .returning(Job.id)
    )


