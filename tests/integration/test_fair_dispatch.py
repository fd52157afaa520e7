"""Fair dispatch: one tenant's backlog never starves another's job.

Every test runs on both dispatch rounds (db/dispatch.py): real Postgres + Redis, and the embedded
SQLite + filesystem queue."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr
from sqlalchemy import insert, select, update

from db import jobs as repo
from db.models import Job, Tenant
from medparse.settings import Settings
from tests.support.factories import new_tenant
from workers.celery_app import make_celery
from workers.context import ContextHolder, WorkerContext
from workers.dispatcher import dispatch_round


@pytest.fixture
def ctx(backend_settings: Settings) -> Iterator[WorkerContext]:
    settings = backend_settings.model_copy(
        update={"dispatch_window": 16, "tenant_max_running_jobs": 16, "endpoint_scoring_uri": "http://127.0.0.1:9/score",
                "endpoint_key": SecretStr("unused: no endpoint call is made here")}
    )
    context = ContextHolder(settings, make_celery(settings, sweeper=False)).get()
    yield context
    context.engine.dispose()


def backlog(
    ctx: WorkerContext, tenant_id: uuid.UUID, count: int, *, priority: int = 0, start: datetime
) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(count)]
    rows = [
        {
            "id": job_id, "tenant_id": tenant_id, "status": "queued", "prompts": ["liver"], "options": {},
            "input_format": "png", "input_width": 8, "input_height": 8, "input_bytes": 10,
            "created_at": start + timedelta(microseconds=i), "updated_at": start, "attempts": 0,
            "priority": priority, "prompt_count": 1,
        }
        for i, job_id in enumerate(ids)
    ]
    with ctx.engine.begin() as conn:
        conn.execute(insert(Job), rows)
    return ids


def claim(ctx: WorkerContext, job_id: str) -> None:
    now = datetime.now(UTC)
    with ctx.engine.begin() as conn:
        claimed = conn.execute(repo.CLAIM, repo.claim_params(uuid.UUID(job_id), now=now, lease_until=now))
        assert claimed.scalar_one() == 1


def test_a_small_tenants_job_overtakes_a_5000_job_backlog_at_the_next_round(ctx: WorkerContext) -> None:
    tenant_a, _ = new_tenant(ctx.settings)
    tenant_b, _ = new_tenant(ctx.settings)
    t0 = datetime.now(UTC) - timedelta(minutes=10)
    a_jobs = backlog(ctx, tenant_a, 5000, start=t0)
    first = dispatch_round(ctx)
    assert first == [str(j) for j in a_jobs[:16]]  # the window is full of A's jobs
    (b_job,) = backlog(ctx, tenant_b, 1, start=datetime.now(UTC))
    assert dispatch_round(ctx) == []  # no free slot in the broker yet
    claim(ctx, first[0])  # a worker picks up one of A's jobs: one slot frees
    assert dispatch_round(ctx) == [str(b_job)]  # B goes next, ahead of A's 4,984 waiting jobs


def test_rounds_alternate_between_tenants(ctx: WorkerContext) -> None:
    tenants = [new_tenant(ctx.settings)[0] for _ in range(3)]
    t0 = datetime.now(UTC) - timedelta(minutes=5)
    owner = {}
    for n, tenant in enumerate(tenants):
        for job_id in backlog(ctx, tenant, 10, start=t0 + timedelta(seconds=n)):
            owner[str(job_id)] = tenant
    dispatched = dispatch_round(ctx)
    assert dispatched is not None and len(dispatched) == 16
    order = [owner[j] for j in dispatched]
    assert order[:6] == tenants + tenants  # first job of each, then the second of each, ...


def test_a_tenants_running_cap_bounds_what_is_dispatched_for_it(ctx: WorkerContext) -> None:
    tenant, _ = new_tenant(ctx.settings)
    with ctx.engine.begin() as conn:
        conn.execute(update(Tenant).where(Tenant.id == tenant).values(max_running_jobs=2))
    jobs = backlog(ctx, tenant, 5, start=datetime.now(UTC))
    assert dispatch_round(ctx) == [str(j) for j in jobs[:2]]
    claim(ctx, str(jobs[0]))
    assert dispatch_round(ctx) == []  # one running + one in the broker = the cap of 2


def test_priority_orders_jobs_within_a_tenant_only(ctx: WorkerContext) -> None:
    tenant, _ = new_tenant(ctx.settings)
    t0 = datetime.now(UTC) - timedelta(minutes=1)
    low = backlog(ctx, tenant, 2, priority=0, start=t0)
    high = backlog(ctx, tenant, 2, priority=5, start=t0 + timedelta(seconds=1))
    dispatched = dispatch_round(ctx)
    assert dispatched == [str(j) for j in high + low]
    with ctx.engine.begin() as conn:
        stamped = conn.execute(select(Job.id).where(Job.dispatched_at.is_not(None))).scalars().all()
    assert set(map(str, stamped)) == set(dispatched)


def test_a_job_the_broker_refused_goes_back_to_the_next_round(
    ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant, _ = new_tenant(ctx.settings)
    jobs = backlog(ctx, tenant, 3, start=datetime.now(UTC))
    send_task = ctx.app.send_task

    def broker_refuses_the_second(name: str, *, args: list[str], task_id: str) -> object:
        if task_id == str(jobs[1]):
            raise ConnectionError("broker down")
        return send_task(name, args=args, task_id=task_id)

    monkeypatch.setattr(ctx.app, "send_task", broker_refuses_the_second)
    assert dispatch_round(ctx) == [str(jobs[0]), str(jobs[2])]
    with ctx.engine.begin() as conn:
        waiting = conn.execute(select(Job.id).where(Job.dispatched_at.is_(None))).scalars().all()
    assert waiting == [jobs[1]]  # handed back: not counted as in the broker
    monkeypatch.undo()
    assert dispatch_round(ctx) == [str(jobs[1])]
