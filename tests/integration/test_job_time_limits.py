"""Time limits that hold whatever the pool type, against real Postgres and the emulator in-process:
a hung endpoint ends the job ``timeout`` at its soft limit, and a thread stuck past the hard limit
stops renewing the lease, so the sweeper takes the job back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from db import jobs as repo
from emulator.config import EmulatorConfig
from medparse.settings import Settings
from tests.integration.test_worker_jobs import job_row, new_job
from tests.support.emulator_server import running_emulator
from workers import lifecycle
from workers.celery_app import make_celery
from workers.context import ContextHolder, WorkerContext
from workers.sweeper import sweep_once
from workers.tasks import run_job

KEY = "time-limit-key"


@pytest.fixture
def hung_emulator() -> Iterator[str]:
    config = EmulatorConfig(keys=[KEY], hang_rate=1.0, hang_mode="trickle", hang_trickle_interval_s=0.2)
    with running_emulator(config) as base_url:
        yield base_url


@pytest.fixture
def ctx(pg_settings: Settings, hung_emulator: str) -> Iterator[WorkerContext]:
    settings = pg_settings.model_copy(update={
        "endpoint_scoring_uri": f"{hung_emulator}/score", "endpoint_key": SecretStr(KEY),
        "endpoint_read_timeout_s": 20.0, "endpoint_request_deadline_s": 30.0,
        "task_soft_time_limit_s": 1.5, "task_time_limit_s": 3.0,
    })
    context = ContextHolder(settings, make_celery(settings, sweeper=False)).get()
    yield context
    context.client.close()
    context.engine.dispose()


def test_a_hung_endpoint_fails_the_job_timeout_at_its_soft_limit(ctx: WorkerContext) -> None:
    job_id = new_job(ctx)
    began = time.monotonic()
    assert run_job(ctx, str(job_id)) == "failed"
    elapsed = time.monotonic() - began
    assert 1.5 <= elapsed < 3.0, elapsed
    row = job_row(ctx, job_id)
    assert row["status"] == "failed" and row["error_code"] == "timeout", row["error_message"]
    assert "time limit" in str(row["error_message"])


def test_the_heartbeat_stops_at_the_hard_limit_so_the_sweeper_takes_a_stuck_job_back(ctx: WorkerContext) -> None:
    job_id = new_job(ctx)
    claimed = lifecycle.claim(ctx.engine, job_id, lease_s=1.0)
    assert claimed is not None
    # A thread stuck for good (no deadline reaches it): heartbeats every 0.2 s for 0.6 s only.
    with lifecycle.LeaseKeeper(ctx.engine, claimed, lease_s=1.0, interval_s=0.2, renew_for_s=0.6):
        time.sleep(0.5)
        renewed = job_row(ctx, job_id)["lease_expires_at"]
        assert isinstance(renewed, datetime) and renewed > datetime.now(UTC)
        time.sleep(1.8)  # past the renewal window and the last lease
        last = job_row(ctx, job_id)["lease_expires_at"]
        assert isinstance(last, datetime) and last < datetime.now(UTC)
        report = sweep_once(ctx)
    assert str(job_id) in report.requeued
    row = job_row(ctx, job_id)
    assert row["status"] == "queued" and row["attempts"] == 1
    # The stuck attempt's late result would be discarded: its lease is gone.
    with ctx.engine.begin() as conn:
        assert conn.execute(repo.extend_lease_stmt(job_id, 1, lease_until=datetime.now(UTC))).rowcount == 0


def test_without_a_time_limit_the_heartbeat_keeps_renewing(ctx: WorkerContext) -> None:
    job_id = new_job(ctx)
    claimed = lifecycle.claim(ctx.engine, job_id, lease_s=1.0)
    assert claimed is not None
    with lifecycle.LeaseKeeper(ctx.engine, claimed, lease_s=1.0, interval_s=0.2):
        time.sleep(1.5)
        lease = job_row(ctx, job_id)["lease_expires_at"]
        assert isinstance(lease, datetime) and lease > datetime.now(UTC)
