"""One job delivery (``run_job``) and the sweeper, against real Postgres, Redis and the emulator.

Celery itself is exercised by the e2e tests; here the task body runs in the test process so
every branch (duplicate delivery, cancel mid-call, endpoint failure, expired lease) is observable.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import redis
from pydantic import SecretStr
from sqlalchemy import select, update

from db import jobs as repo
from db.models import Job, JobMask
from emulator.config import EmulatorConfig
from medparse.settings import Settings
from tests.support.emulator_server import running_emulator
from tests.support.factories import new_tenant, organ_image
from tests.support.throwaway import REDIS_URL
from workers.celery_app import make_celery
from workers.context import ContextHolder, WorkerContext
from workers.dispatcher import dispatch_round
from workers.sweeper import sweep_once
from workers.tasks import run_job

KEY = "emulator-test-key"


@pytest.fixture
def emulator() -> Iterator[str]:
    with running_emulator(EmulatorConfig(keys=[KEY])) as base_url:
        yield base_url


@pytest.fixture
def ctx(pg_settings: Settings, emulator: str) -> Iterator[WorkerContext]:
    settings = pg_settings.model_copy(
        update={
            "endpoint_scoring_uri": f"{emulator}/score", "endpoint_key": SecretStr(KEY),
            "endpoint_max_attempts": 2, "endpoint_backoff_min_s": 0.01, "endpoint_backoff_max_s": 0.02,
        }
    )
    app = make_celery(settings, sweeper=False)
    context = ContextHolder(settings, app).get()
    yield context
    context.client.close()
    context.engine.dispose()


def new_job(ctx: WorkerContext, prompts: list[str] | None = None) -> uuid.UUID:
    tenant_id, _ = new_tenant(ctx.settings)
    image, _ = organ_image()
    job = repo.NewJob(
        id=uuid.uuid4(), tenant_id=tenant_id, prompts=prompts or ["liver", "tumor"], options={},
        input_format="png", input_width=320, input_height=240, image=image, now=datetime.now(UTC),
    )
    with ctx.engine.begin() as conn:
        for stmt in repo.insert_job_statements(job):
            conn.execute(stmt)
    return job.id


def job_row(ctx: WorkerContext, job_id: uuid.UUID) -> dict[str, object]:
    with ctx.engine.begin() as conn:
        return dict(conn.execute(select(Job).where(Job.id == job_id)).mappings().one())


def mask_count(ctx: WorkerContext, job_id: uuid.UUID) -> int:
    with ctx.engine.begin() as conn:
        return len(conn.execute(select(JobMask.index).where(JobMask.job_id == job_id)).all())


def test_a_delivery_segments_and_stores_one_mask_per_prompt(ctx: WorkerContext) -> None:
    job_id = new_job(ctx)
    assert run_job(ctx, str(job_id)) == "succeeded"
    row = job_row(ctx, job_id)
    assert row["status"] == "succeeded" and row["attempts"] == 1
    assert (row["result_width"], row["result_height"]) == (320, 240)
    assert mask_count(ctx, job_id) == 2


def test_a_duplicate_delivery_is_a_no_op(ctx: WorkerContext, emulator: str) -> None:
    job_id = new_job(ctx)
    assert run_job(ctx, str(job_id)) == "succeeded"
    calls = httpx.get(f"{emulator}/_emulator/stats", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert run_job(ctx, str(job_id)) == "skipped"
    after = httpx.get(f"{emulator}/_emulator/stats", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert after == calls  # the endpoint was not called again
    assert mask_count(ctx, job_id) == 2 and job_row(ctx, job_id)["attempts"] == 1


def test_a_job_canceled_during_the_call_discards_the_result(ctx: WorkerContext, emulator: str) -> None:
    httpx.post(f"{emulator}/_emulator/config", json={"latency_ms": 600}, headers={"Authorization": f"Bearer {KEY}"})
    job_id = new_job(ctx)
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(run_job(ctx, str(job_id))))
    worker.start()
    deadline = time.monotonic() + 5
    while job_row(ctx, job_id)["status"] != "running" and time.monotonic() < deadline:
        time.sleep(0.02)
    now = datetime.now(UTC)
    with ctx.engine.begin() as conn:
        stmt = repo.transition_stmt(job_id, repo.JobStatus.running, repo.JobStatus.canceled, now=now)
        repo.transition_sync(conn, stmt)
    worker.join(10)
    assert outcome == ["discarded"]
    assert job_row(ctx, job_id)["status"] == "canceled" and mask_count(ctx, job_id) == 0


def test_an_endpoint_that_keeps_failing_ends_the_job_failed_with_a_code(ctx: WorkerContext, emulator: str) -> None:
    httpx.post(
        f"{emulator}/_emulator/config", json={"fault_rates": {"503": 1.0}}, headers={"Authorization": f"Bearer {KEY}"}
    )
    job_id = new_job(ctx)
    assert run_job(ctx, str(job_id)) == "failed"
    row = job_row(ctx, job_id)
    assert row["status"] == "failed" and row["error_code"] == "endpoint_unavailable"
    assert row["error_message"] and row["completed_at"] is not None


def test_the_sweeper_requeues_an_expired_lease_then_gives_up_after_max_attempts(ctx: WorkerContext) -> None:
    job_id = new_job(ctx)
    past = datetime.now(UTC) - timedelta(seconds=5)
    for attempt in range(1, ctx.settings.job_max_attempts + 1):
        with ctx.engine.begin() as conn:  # a worker claims the job and dies: its lease runs out
            claimed = conn.execute(repo.CLAIM, repo.claim_params(job_id, now=past, lease_until=past))
            assert claimed.scalar_one() == attempt
        report = sweep_once(ctx)
        if attempt < ctx.settings.job_max_attempts:
            assert str(job_id) in report.requeued
            row = job_row(ctx, job_id)
            assert row["status"] == "queued" and row["dispatched_at"] is None  # back with the dispatcher
    assert str(job_id) in report.exhausted
    row = job_row(ctx, job_id)
    assert row["status"] == "failed" and row["error_code"] == "attempts_exhausted"


def test_a_job_whose_message_was_lost_is_dispatched_again(ctx: WorkerContext) -> None:
    job_id = new_job(ctx)
    queue_key = f"{ctx.settings.redis_namespace}:segmentation"
    client = redis.Redis.from_url(REDIS_URL)
    assert dispatch_round(ctx) == [str(job_id)]
    assert client.llen(queue_key) == 1
    client.delete(queue_key)  # the broker loses the message (e.g. Redis flushed)
    assert dispatch_round(ctx) == []  # still counted as in the broker until the sweeper says otherwise
    with ctx.engine.begin() as conn:
        conn.execute(update(Job).where(Job.id == job_id).values(dispatched_at=datetime.now(UTC) - timedelta(hours=1)))
    assert sweep_once(ctx).republished == [str(job_id)]
    # A second sweeper right after finds nothing stale: the update is a compare-and-set.
    assert sweep_once(ctx).republished == []
    assert dispatch_round(ctx) == [str(job_id)]
    assert client.llen(queue_key) == 1
    client.close()


def test_concurrent_jobs_share_one_request_up_to_the_row_setting(pg_settings: Settings, emulator: str) -> None:
    settings = pg_settings.model_copy(
        update={
            "endpoint_scoring_uri": f"{emulator}/score", "endpoint_key": SecretStr(KEY),
            "endpoint_max_rows_per_request": 3, "endpoint_batch_wait_s": 2.0,
        }
    )
    context = ContextHolder(settings, make_celery(settings, sweeper=False)).get()
    admin = {"Authorization": f"Bearer {KEY}"}
    httpx.post(f"{emulator}/_emulator/config", json={"reset_stats": True}, headers=admin)
    job_ids = [new_job(context) for _ in range(3)]
    outcomes: list[str] = []
    threads = [threading.Thread(target=lambda j=j: outcomes.append(run_job(context, str(j)))) for j in job_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    stats = httpx.get(f"{emulator}/_emulator/stats", headers=admin).json()
    assert outcomes == ["succeeded"] * 3
    assert stats["requests_total"] == 1 and stats["rows_scored"] == 3
    assert all(job_row(context, j)["result_meta"]["endpoint_rows_in_request"] == 3 for j in job_ids)  # type: ignore[index]
    context.client.close()
    context.engine.dispose()


def test_a_rejected_row_does_not_fail_its_batch_mates(ctx: WorkerContext) -> None:
    from medparse.endpoint.client import ScoreRow
    from medparse.endpoint.errors import EndpointRejectedInput
    from workers.batching import RowBatcher

    batcher = RowBatcher(ctx.client, max_rows=3, wait_s=5.0)
    good_png, _ = organ_image()
    rows = [ScoreRow(good_png, ["liver"]), ScoreRow(b"not a png at all", ["liver"]), ScoreRow(good_png, ["tumor"])]
    results: dict[int, object] = {}

    def send(i: int) -> None:
        try:
            results[i] = batcher.score(rows[i], job_id=f"job-{i}").row.labels
        except EndpointRejectedInput as exc:
            results[i] = exc

    threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results[0] == ["liver"] and results[2] == ["tumor"]
    assert isinstance(results[1], EndpointRejectedInput)


def test_the_retention_purge_finds_old_jobs_without_scanning_every_finished_one(ctx: WorkerContext) -> None:
    job_id = new_job(ctx)
    assert run_job(ctx, str(job_id)) == "succeeded"
    with ctx.engine.begin() as conn:  # 5,000 more finished jobs, copies of it, none old enough to purge
        conn.exec_driver_sql(
            "INSERT INTO jobs SELECT (jsonb_populate_record(NULL::jobs, to_jsonb(j) || jsonb_build_object("
            "'id', gen_random_uuid(), 'completed_at', now() - g * interval '1 minute'))).* "
            "FROM jobs j, generate_series(1, 5000) g WHERE j.id = %(id)s", {"id": job_id})
        conn.exec_driver_sql("ANALYZE jobs")
        stmt = repo.purge_finished_stmt(completed_before=datetime.now(UTC) - timedelta(days=30), limit=100)
        compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
        plan = "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + str(compiled), compiled.params))
    assert "ix__jobs__completed" in plan, plan


def test_retention_deletes_inputs_on_success_and_purges_old_jobs(ctx: WorkerContext) -> None:
    from db.models import JobInput

    settings = ctx.settings.model_copy(update={"retention_delete_input_on_success": True, "retention_days": 1.0})
    context = WorkerContext(**{**ctx.__dict__, "settings": settings})
    job_id = new_job(context)
    assert run_job(context, str(job_id)) == "succeeded"
    with context.engine.begin() as conn:
        assert conn.execute(select(JobInput.job_id).where(JobInput.job_id == job_id)).first() is None
    assert mask_count(context, job_id) == 2  # the masks stay
    assert sweep_once(context).purged == 0  # finished just now: kept
    with context.engine.begin() as conn:
        conn.execute(update(Job).where(Job.id == job_id).values(completed_at=datetime.now(UTC) - timedelta(days=2)))
    assert sweep_once(context).purged == 1
    with context.engine.begin() as conn:
        assert conn.execute(select(Job.id).where(Job.id == job_id)).first() is None
        assert conn.execute(select(JobMask.index).where(JobMask.job_id == job_id)).first() is None
