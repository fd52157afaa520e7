"""Statements over ``job_medical`` and the volume-job columns of ``jobs`` (migration 0004_medical).

Like ``db.jobs``: statements only, executed in the caller's transaction; reads from the API are
scoped by tenant through the job they belong to.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Select, Update, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from db.job_record import MedicalRecord
from db.models import Job, JobMedical
from db.status import JobStatus


def insert_medical_stmt(job_id: uuid.UUID, values: dict[str, Any]) -> Any:
    return insert(JobMedical).values(job_id=job_id, **values)


def select_medical(tenant_id: uuid.UUID, job_id: uuid.UUID, *, with_data: bool = True) -> Select[Any]:
    columns = [c for c in JobMedical.__table__.c if with_data or c.name != "data"]
    return (
        select(*columns)
        .join(Job, Job.id == JobMedical.job_id)
        .where(JobMedical.job_id == job_id, Job.tenant_id == tenant_id)
    )


async def read_medical(conn: AsyncConnection, tenant_id: uuid.UUID, job_id: uuid.UUID) -> MedicalRecord | None:
    """The medical side of the tenant's job, or None (a plain image's job has none)."""
    row = (await conn.execute(select_medical(tenant_id, job_id))).mappings().first()
    return None if row is None else MedicalRecord.from_row(row)


def progress_stmt(job_id: uuid.UUID, attempt: int, *, done: int, total: int) -> Update:
    """Record a running volume job's progress; pinned to the attempt (0 rows = no longer ours)."""
    return (
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.running.value, Job.attempts == attempt)
        .values(progress={"done": done, "total": total})
    )
