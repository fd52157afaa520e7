"""Group commit of new jobs (gateway/jobs/writer.py) on a real Postgres database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from db import jobs as repo
from db.engine import make_async_engine
from db.models import Job, JobInput
from gateway.errors import QuotaExceeded
from gateway.jobs.writer import JobWriter, PendingJob
from medparse.settings import Settings
from tests.support.factories import new_tenant


def _pending(tenant_id: uuid.UUID, image: bytes = b"\x89PNG-ish bytes") -> PendingJob:
    new = repo.NewJob(
        id=uuid.uuid4(), tenant_id=tenant_id, prompts=["liver"], options={}, input_format="png",
        input_width=4, input_height=4, image=image, now=datetime.now(UTC), priority=0, input_meta=None,
    )
    job_params, input_params = repo.insert_job_params(new)
    return PendingJob(tenant_id, job_params, input_params)


@asynccontextmanager
async def _writer(settings: Settings) -> AsyncIterator[tuple[AsyncEngine, JobWriter]]:
    engine = make_async_engine(settings)
    writer = JobWriter(engine, settings)
    try:
        yield engine, writer
    finally:
        await writer.close()
        await engine.dispose()


async def _count_jobs(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(Job))).scalar_one())


async def test_concurrent_submissions_share_transactions_and_all_commit(pg_settings: Settings) -> None:
    tenant_a, _ = new_tenant(pg_settings)
    tenant_b, _ = new_tenant(pg_settings)
    commits = 0

    def count_commit(conn: object) -> None:
        nonlocal commits
        commits += 1

    async with _writer(pg_settings) as (engine, writer):
        event.listen(engine.sync_engine, "commit", count_commit)
        jobs = [_pending(tenant_a if i % 2 else tenant_b) for i in range(40)]
        await asyncio.gather(*(writer.write(job) for job in jobs))
        assert await _count_jobs(engine) == 40
        async with engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(JobInput))).scalar_one() == 40
        assert 1 <= commits < 10, commits  # the first job alone, then the ones that queued meanwhile


async def test_a_bad_job_fails_alone(pg_settings: Settings) -> None:
    tenant, _ = new_tenant(pg_settings)
    async with _writer(pg_settings) as (engine, writer):
        good = [_pending(tenant) for _ in range(6)]
        bad = _pending(uuid.uuid4())  # no such tenant: the foreign key refuses it
        results = await asyncio.gather(*(writer.write(job) for job in [*good[:3], bad, *good[3:]]),
                                       return_exceptions=True)
        assert isinstance(results[3], IntegrityError)
        assert [r for i, r in enumerate(results) if i != 3] == [None] * 6
        async with engine.connect() as conn:
            ids = set((await conn.execute(select(Job.id))).scalars())
        assert ids == {job.job_params["id"] for job in good}


async def test_batches_respect_the_byte_limit(pg_settings: Settings) -> None:
    tenant, _ = new_tenant(pg_settings)
    settings = pg_settings.model_copy(update={"submit_batch_max_bytes": 2500})
    sizes: list[int] = []

    def record(conn: object, cursor: object, statement: str, params: object, context: object, many: bool) -> None:
        if statement.startswith("INSERT INTO job_inputs"):
            sizes.append(len(params) if many and isinstance(params, list) else 1)

    async with _writer(settings) as (engine, writer):
        event.listen(engine.sync_engine, "before_cursor_execute", record)
        await asyncio.gather(*(writer.write(_pending(tenant, b"x" * 1000)) for _ in range(9)))
        assert sum(sizes) == 9 and max(sizes) <= 2  # 1,000-byte images, at most 2,500 bytes per batch


async def test_a_cancelled_caller_waits_for_the_outcome(pg_settings: Settings) -> None:
    tenant, _ = new_tenant(pg_settings)
    async with _writer(pg_settings) as (engine, writer):
        job = _pending(tenant)
        task = asyncio.create_task(writer.write(job))
        await asyncio.sleep(0)  # queued, its transaction under way
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert job.done.done() and job.done.exception() is None  # the write ended before the caller did
        assert await _count_jobs(engine) == 1


async def test_an_admission_that_refuses_or_answers_leaves_the_shared_transaction_to_the_others(
    pg_settings: Settings,
) -> None:
    """A job's admission (its Idempotency-Key claim, its queued-jobs quota) runs in the transaction
    the job shares with others: its refusal or its replayed answer leaves that job out, alone."""
    tenant, _ = new_tenant(pg_settings)
    other, _ = new_tenant(pg_settings)
    seen_before: list[int] = []

    async def refuse(conn: object, admitted_before: int) -> None:
        raise QuotaExceeded("full", code="queued_jobs_quota_exceeded", retry_after="30")

    async def answer(conn: object, admitted_before: int) -> str:
        return "the first request's answer"

    async def let_in(conn: object, admitted_before: int) -> None:
        seen_before.append(admitted_before)

    commits = 0

    def count_commit(conn: object) -> None:
        nonlocal commits
        commits += 1

    async with _writer(pg_settings) as (engine, writer):
        event.listen(engine.sync_engine, "commit", count_commit)
        first = _pending(other)  # another tenant's job in the same transaction
        jobs = [_pending(tenant) for _ in range(6)]
        jobs[1].admit, jobs[3].admit, jobs[5].admit = refuse, answer, let_in
        committed: list[int] = []
        for i, job in enumerate(jobs):
            job.after_commit = lambda i=i: committed.append(i)
        writes = [asyncio.ensure_future(writer.write(job)) for job in [first, *jobs]]
        await asyncio.sleep(0)  # each write has queued its job; their transaction has not begun
        unsettled = (writer.unsettled(tenant), writer.unsettled(other))
        results = await asyncio.gather(*writes, return_exceptions=True)
        assert unsettled == (6, 1)
        await asyncio.sleep(0)  # the done callbacks
        assert writer.unsettled(tenant) == writer.unsettled(other) == 0
        assert sorted(committed) == [0, 2, 4, 5]  # inserted: not the refused one, nor the one answered instead
        assert results[0] is None
        assert isinstance(results[2], QuotaExceeded) and results[2].code == "queued_jobs_quota_exceeded"
        assert results[4] == "the first request's answer"
        assert [results[i] for i in (1, 3, 5, 6)] == [None] * 4
        assert seen_before == [3]  # jobs 0, 2 and 4 of the tenant were admitted before it, in its transaction
        assert commits == 1  # all seven waited before the first transaction began: they shared it
        async with engine.connect() as conn:
            ids = set((await conn.execute(select(Job.id))).scalars())
        assert ids == {job.job_params["id"] for job in [first, jobs[0], jobs[2], jobs[4], jobs[5]]}
