"""Every timestamp column reads back as an aware UTC datetime, on PostgreSQL and on the embedded
SQLite (which stores naive ones): the database layer says so once (db/types.py ``UtcDateTime``),
so no reader patches ``tzinfo`` itself."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy import func, insert, select, update

from db.engine import make_async_engine, make_sync_engine
from db.models import Job, Tenant
from medparse.settings import Settings
from tests.support.factories import new_tenant

WHEN = datetime(2026, 11, 27, 12, 0, 0, 123456, tzinfo=UTC)


def _insert_job(settings: Settings) -> uuid.UUID:
    tenant_id, _ = new_tenant(settings)
    job_id = uuid.uuid4()
    engine = make_sync_engine(settings)
    with engine.begin() as conn:
        conn.execute(insert(Job).values(
            id=job_id, tenant_id=tenant_id, status="queued", prompts=["liver"], options={}, input_format="png",
            input_width=8, input_height=8, input_bytes=10, created_at=WHEN, updated_at=WHEN, attempts=0,
            priority=0, prompt_count=1,
        ))
    engine.dispose()
    return job_id


def _is_utc(value: datetime | None) -> bool:
    return value is not None and value.utcoffset() == timedelta(0)


def test_selects_aggregates_and_returning_give_aware_utc(backend_settings: Settings) -> None:
    job_id = _insert_job(backend_settings)
    engine = make_sync_engine(backend_settings)
    with engine.begin() as conn:
        created = conn.execute(select(Job.created_at).where(Job.id == job_id)).scalar_one()
        oldest = conn.execute(select(func.min(Job.created_at))).scalar_one()
        later = WHEN.astimezone(timezone(timedelta(hours=2))) + timedelta(minutes=1)
        returned = conn.execute(
            update(Job).where(Job.id == job_id).values(updated_at=later).returning(Job.updated_at)
        ).scalar_one()
        tenant_created = conn.execute(select(func.max(Tenant.created_at))).scalar_one()
    engine.dispose()
    assert _is_utc(created) and created == WHEN
    assert _is_utc(oldest) and oldest == WHEN
    assert _is_utc(returned) and returned == WHEN + timedelta(minutes=1)
    assert _is_utc(tenant_created)


async def test_the_gateways_async_engine_reads_aware_utc_too(backend_settings: Settings) -> None:
    job_id = _insert_job(backend_settings)
    engine = make_async_engine(backend_settings)
    try:
        async with engine.connect() as conn:
            row = (await conn.execute(select(Job.created_at, Job.started_at).where(Job.id == job_id))).one()
    finally:
        await engine.dispose()
    assert _is_utc(row.created_at) and row.created_at == WHEN and row.started_at is None
