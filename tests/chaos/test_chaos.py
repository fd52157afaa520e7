"""Chaos: real processes are killed and real servers restarted mid-work; nothing may be lost.

Each test runs the emulator (300 ms latency, 5 % injected 500/429), a gateway and two Celery
workers on a private Redis, submits jobs with Idempotency-Keys (retrying like a careful client),
breaks something, and then checks the invariants in Postgres (``Cluster.assert_nothing_lost``):
every job answered 202 is terminal with a reason, one job per key, exactly one result set per
job, and no job was called on the endpoint more often than its attempts.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from medparse.settings import Settings
from runtime.migrate import upgrade
from tests.support.cluster import Cluster, Submissions
from tests.support.factories import new_tenant
from tests.support.servers import PrivatePostgres, PrivateRedis
from tests.support.webhook_receiver import Receiver, running_receiver

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop(kill=True)


@pytest.fixture
def cluster_settings(pg_url: str, private_redis: PrivateRedis, tmp_path: Path) -> Settings:
    settings = Settings(
        database_url=pg_url, redis_url=private_redis.url, redis_namespace=f"chaos-{uuid.uuid4().hex[:8]}",
        data_dir=tmp_path / "var",
    )
    upgrade(settings)
    return settings


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


@pytest.fixture
def cluster(cluster_settings: Settings, tmp_path: Path, receiver: Receiver) -> Iterator[Cluster]:
    c = Cluster(cluster_settings, tmp_path)
    c.webhook_url = receiver.url("/events")
    c.start_all(workers=2)
    yield c
    c.stop_all()


def running_count(cluster: Cluster, job_ids: list[str]) -> int:
    return sum(1 for r in cluster.job_rows(job_ids).values() if r["status"] == "running")


def test_kill_9_workers_mid_call_repeatedly(cluster_settings: Settings, tmp_path: Path, receiver: Receiver) -> None:
    cluster = Cluster(cluster_settings, tmp_path, latency_ms=900)
    cluster.webhook_url = receiver.url("/events")
    cluster.start_all(workers=2)
    try:
        _, key = new_tenant(cluster.settings)
        subs = Submissions()
        cluster.submit(key, 60, subs)
        job_ids = list(subs.accepted.values())
        for victim in (0, 1, 0):  # kill -9 each worker while it holds jobs mid-call, then bring it back
            deadline = time.monotonic() + 30
            while running_count(cluster, job_ids) < 4 and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.4)  # let the calls reach the endpoint
            cluster.kill_worker(victim)
            cluster.start_worker(victim)
        cluster.wait_terminal(job_ids, timeout_s=150)
        figures = cluster.assert_nothing_lost(subs)
        print("chaos figures:", figures)
        rows = cluster.job_rows(job_ids)
        rerun = [j for j, r in rows.items() if r["attempts"] >= 2]
        # The kills really interrupted work: some jobs ran again, and their first calls were seen.
        assert rerun and figures["endpoint_calls"] > figures["jobs"]
        cluster.assert_webhooks_delivered(subs, receiver)
    finally:
        cluster.stop_all()


def test_redis_restart_with_jobs_queued_then_flushall(
    cluster: Cluster, private_redis: PrivateRedis, receiver: Receiver
) -> None:
    _, key = new_tenant(cluster.settings)
    subs = Submissions()
    cluster.submit(key, 30, subs, prefix="before")
    private_redis.stop()  # jobs are queued in Postgres and some in the broker (AOF keeps those)
    time.sleep(1.0)
    private_redis.start()
    time.sleep(2.0)
    redis.Redis.from_url(private_redis.url).flushall()  # now lose everything Redis held
    cluster.submit(key, 20, subs, prefix="after")
    cluster.wait_terminal(list(subs.accepted.values()), timeout_s=150)
    figures = cluster.assert_nothing_lost(subs)
    figures["webhook_requests"] = cluster.assert_webhooks_delivered(subs, receiver)
    print("chaos figures:", figures, "client retries:", subs.retries)
    assert figures["jobs"] == 50


def test_gateway_killed_mid_burst_loses_nothing(cluster: Cluster, receiver: Receiver) -> None:
    _, key = new_tenant(cluster.settings)
    subs = Submissions()
    submitter = cluster.submit_in_background(key, 60, subs)
    time.sleep(0.8)
    cluster.kill_gateway()  # possibly between a commit and its answer (or its dispatch nudge)
    time.sleep(0.5)
    cluster.start_gateway()
    submitter.join(120)
    cluster.wait_terminal(list(subs.accepted.values()), timeout_s=150)
    figures = cluster.assert_nothing_lost(subs)
    figures["webhook_requests"] = cluster.assert_webhooks_delivered(subs, receiver)
    print("chaos figures:", figures, "client retries:", subs.retries)
    assert figures["jobs"] == 60 and subs.retries > 0


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    server.init()
    server.start()
    yield server
    server.destroy()


def test_postgres_restart_during_submissions(
    private_postgres: PrivatePostgres, private_redis: PrivateRedis, tmp_path: Path, receiver: Receiver
) -> None:
    with psycopg.connect(private_postgres.admin_url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE medparse")
    settings = Settings(
        database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{private_postgres.port}/medparse",
        redis_url=private_redis.url, redis_namespace="chaos-pg", data_dir=tmp_path / "var",
    )
    upgrade(settings)
    cluster = Cluster(settings, tmp_path)
    cluster.webhook_url = receiver.url("/events")
    cluster.start_all(workers=2)
    try:
        _, key = new_tenant(settings)
        subs = Submissions()
        submitter = cluster.submit_in_background(key, 50, subs)
        time.sleep(1.5)
        private_postgres.stop("fast")  # in the middle of submissions and of running jobs
        time.sleep(2.0)
        private_postgres.start()
        submitter.join(150)
        cluster.wait_terminal(list(subs.accepted.values()), timeout_s=150)
        figures = cluster.assert_nothing_lost(subs)
        figures["webhook_requests"] = cluster.assert_webhooks_delivered(subs, receiver)
        print("chaos figures:", figures, "client retries:", subs.retries)
        assert figures["jobs"] == 50
    finally:
        cluster.stop_all()


def test_sigterm_finishes_in_flight_work_and_nothing_stays_running(cluster: Cluster, receiver: Receiver) -> None:
    _, key = new_tenant(cluster.settings)
    subs = Submissions()
    cluster.submit(key, 24, subs)
    job_ids = list(subs.accepted.values())
    deadline = time.monotonic() + 30
    while running_count(cluster, job_ids) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    worker = cluster.workers[0]
    worker.terminate()  # SIGTERM: Celery's warm shutdown finishes the tasks it is running
    assert worker.wait(60) == 0
    cluster.wait_terminal(job_ids, timeout_s=120)
    figures = cluster.assert_nothing_lost(subs)
    figures["webhook_requests"] = cluster.assert_webhooks_delivered(subs, receiver)
    print("chaos figures:", figures)
    # Warm shutdown finished its calls instead of abandoning them: no job needed a second attempt.
    assert all(r["attempts"] == 1 for r in cluster.job_rows(job_ids).values())
