"""The group-commit queue of new jobs is bounded in jobs and bytes: beyond it, 503
``submit_queue_full`` with Retry-After at once, and nothing half-written (gateway/jobs/writer.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import func, select

from db import jobs as repo
from db.engine import make_async_engine
from db.models import Job
from gateway.app import create_app
from gateway.errors import Busy
from gateway.http.problems import problem_of
from gateway.jobs.writer import JobWriter, PendingJob
from medparse.settings import Settings, to_sync_url
from tests.integration.test_gateway_api import auth, form
from tests.support.factories import new_tenant, organ_image


def _pending(tenant_id: uuid.UUID, size: int = 16) -> PendingJob:
    new = repo.NewJob(
        id=uuid.uuid4(), tenant_id=tenant_id, prompts=["liver"], options={}, input_format="png",
        input_width=4, input_height=4, image=b"x" * size, now=datetime.now(UTC), priority=0, input_meta=None,
    )
    job_params, input_params = repo.insert_job_params(new)
    return PendingJob(tenant_id, job_params, input_params)


@contextmanager
def inserts_blocked(settings: Settings) -> Iterator[None]:
    """Another session holds a lock on ``jobs`` that blocks INSERTs (reads go on): the database
    "falls behind" until the block ends."""
    conninfo = to_sync_url(settings.async_database_url).replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as conn:
        conn.execute("LOCK TABLE jobs IN EXCLUSIVE MODE")
        yield
        conn.rollback()


async def _settled(tasks: list[asyncio.Task[None]]) -> None:
    await asyncio.sleep(0.3)  # the first write is in its (blocked) transaction, the rest wait
    assert not any(t.done() for t in tasks), [t.exception() for t in tasks if t.done()]


async def test_beyond_the_waiting_jobs_bound_a_submission_is_refused_at_once(pg_settings: Settings) -> None:
    settings = pg_settings.model_copy(update={"submit_queue_max_jobs": 2})
    tenant, _ = new_tenant(settings)
    engine = make_async_engine(settings)
    writer = JobWriter(engine, settings)
    try:
        with inserts_blocked(settings):
            written = [asyncio.create_task(writer.write(_pending(tenant)))]  # in flight: not waiting
            await asyncio.sleep(0.2)
            written += [asyncio.create_task(writer.write(_pending(tenant))) for _ in range(2)]  # waiting
            await _settled(written)
            with pytest.raises(Busy) as refused:
                await asyncio.wait_for(writer.write(_pending(tenant)), 1.0)
            problem = problem_of(refused.value)
            assert problem.status == 503 and problem.code == "submit_queue_full"
            assert problem.headers["Retry-After"] == "1"
        await asyncio.gather(*written)
        async with engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(Job))).scalar_one() == 3
        await writer.write(_pending(tenant))  # drained: room again
    finally:
        await writer.close()
        await engine.dispose()


async def test_beyond_the_waiting_bytes_bound_a_submission_is_refused_but_a_lone_big_one_is_not(
    pg_settings: Settings,
) -> None:
    settings = pg_settings.model_copy(update={"submit_queue_max_bytes": 1000})
    tenant, _ = new_tenant(settings)
    engine = make_async_engine(settings)
    writer = JobWriter(engine, settings)
    try:
        with inserts_blocked(settings):
            written = [asyncio.create_task(writer.write(_pending(tenant, 5000)))]  # in flight: not waiting
            await asyncio.sleep(0.2)
            written.append(asyncio.create_task(writer.write(_pending(tenant, 3000))))  # waits alone: admitted
            await _settled(written)
            with pytest.raises(Busy) as refused:
                await asyncio.wait_for(writer.write(_pending(tenant, 10)), 1.0)
            assert problem_of(refused.value).code == "submit_queue_full"
        await asyncio.gather(*written)
    finally:
        await writer.close()
        await engine.dispose()


async def test_a_full_submit_queue_answers_503_over_http_and_writes_nothing_half(pg_settings: Settings) -> None:
    # one job per transaction: exactly one in flight, two waiting, while inserts are blocked
    settings = pg_settings.model_copy(update={"submit_queue_max_jobs": 2, "submit_batch_max_jobs": 1})
    key = new_tenant(settings)[1]
    image, _ = organ_image(64, 48)
    async with TestClient(TestServer(create_app(settings))) as api:
        with inserts_blocked(settings):
            posts = [asyncio.create_task(api.post("/v1/jobs", data=form(image), headers=auth(key)))
                     for _ in range(8)]
            done, _ = await asyncio.wait(posts, timeout=3.0)
            refused = [await t.result().json() for t in done if t.result().status == 503]
            assert len(refused) == 5, [t.result().status for t in done]  # 1 in flight + 2 waiting accepted
            assert {p["code"] for p in refused} == {"submit_queue_full"}
            assert all(t.result().headers["Retry-After"] == "1" for t in done)
        statuses = sorted([(await t).status for t in posts])
        assert statuses == [202] * 3 + [503] * 5
        listed = await (await api.get("/v1/jobs", headers=auth(key))).json()
        assert len(listed["data"]) == 3
