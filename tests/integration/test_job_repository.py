"""The repository's compare-and-set transitions against a real, migrated Postgres."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from db import jobs as repo
from db.engine import make_sync_engine
from db.models import Job, JobMask
from db.status import InvalidTransition, JobStatus
from medparse.settings import Settings
from tests.support.factories import new_tenant


def _new_job(settings: Settings) -> uuid.UUID:
    tenant_id, _ = new_tenant(settings)
    engine = make_sync_engine(settings)
    job = repo.NewJob(
        id=uuid.uuid4(), tenant_id=tenant_id, prompts=["liver"], options={}, input_format="png",
        input_width=4, input_height=3, image=b"\x89PNG...", now=datetime.now(UTC),
    )
    with engine.begin() as conn:
        for stmt in repo.insert_job_statements(job):
            conn.execute(stmt)
    engine.dispose()
    return job.id


def test_only_one_of_many_concurrent_claims_wins(pg_settings: Settings) -> None:
    job_id = _new_job(pg_settings)
    engine = make_sync_engine(pg_settings)
    winners: list[int] = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        now = datetime.now(UTC)
        with engine.begin() as conn:
            attempt = conn.execute(
                repo.CLAIM, repo.claim_params(job_id, now=now, lease_until=now + timedelta(seconds=30))
            ).scalar_one_or_none()
        if attempt is not None:
            winners.append(attempt)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert winners == [1]
    engine.dispose()


def test_a_stale_attempt_cannot_finish_the_job(pg_settings: Settings) -> None:
    job_id = _new_job(pg_settings)
    engine = make_sync_engine(pg_settings)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(repo.CLAIM, repo.claim_params(job_id, now=now, lease_until=now))
        repo.transition_sync(conn, repo.transition_stmt(job_id, JobStatus.running, JobStatus.queued, now=now))
        assert conn.execute(repo.CLAIM, repo.claim_params(job_id, now=now, lease_until=now)).scalar_one() == 2
    with pytest.raises(repo.StaleTransition), engine.begin() as conn:
        repo.transition_sync(
            conn, repo.transition_stmt(job_id, JobStatus.running, JobStatus.succeeded, now=now, attempt=1)
        )
    with engine.begin() as conn:
        status = conn.execute(select(Job.status).where(Job.id == job_id)).scalar_one()
    assert status == "running"
    engine.dispose()


def test_transitions_outside_the_table_are_refused_before_any_sql() -> None:
    with pytest.raises(InvalidTransition):
        repo.transition_stmt(uuid.uuid4(), JobStatus.succeeded, JobStatus.running, now=datetime.now(UTC))


def test_a_job_cannot_hold_two_result_sets(pg_settings: Settings) -> None:
    job_id = _new_job(pg_settings)
    engine = make_sync_engine(pg_settings)
    row = {"job_id": job_id, "index": 0, "prompt": "liver", "label": "liver", "area_px": 1, "bbox": [0, 0, 1, 1],
           "height": 3, "width": 4, "encoding": "x", "data": b"x"}
    with engine.begin() as conn:
        conn.execute(repo.INSERT_MASKS, [row])
    with pytest.raises(Exception, match="pk__job_masks"), engine.begin() as conn:
        conn.execute(repo.INSERT_MASKS, [row])
    with engine.begin() as conn:
        assert conn.execute(select(JobMask.index).where(JobMask.job_id == job_id)).all() == [(0,)]
    engine.dispose()


def test_listing_is_scoped_to_the_tenant(backend_settings: Settings) -> None:
    """Also on the embedded SQLite, where no row-level security backs the query's tenant filter."""
    job_id = _new_job(backend_settings)
    other_tenant, _ = new_tenant(backend_settings)
    engine = make_sync_engine(backend_settings)
    with engine.begin() as conn:
        assert conn.execute(repo.SELECT_JOB, {"job_id": job_id, "tenant_id": other_tenant}).first() is None
        assert conn.execute(repo.list_jobs_stmt(other_tenant, status=None, limit=10, after=None)).all() == []
    engine.dispose()
