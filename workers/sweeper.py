"""The sweeper: Postgres is the truth, the broker only a hint; this closes the gap between them.

Every ``sweep_interval_s`` it
- hands ``queued`` jobs published longer than ``redispatch_after_s`` ago back to the fair
  dispatcher (a lost message, a flushed or restarted Redis);
- takes back ``running`` jobs whose lease expired (a killed worker): re-queued while attempts
  remain, else ``failed`` with ``attempts_exhausted`` so a poison job cannot loop forever.
Several workers may sweep at once: each change is a compare-and-set, so they never double up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from db import jobs as repo
from db.idempotency import purge_expired_stmt
from db.outbox import record_transition
from db.status import JobStatus
from workers.context import WorkerContext

log = logging.getLogger(__name__)

BATCH = 500


@dataclass
class SweepReport:
    republished: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    exhausted: list[str] = field(default_factory=list)
    purged: int = 0


def _take_back_expired(ctx: WorkerContext, now: datetime, report: SweepReport) -> None:
    with ctx.engine.begin() as conn:
        expired = list(conn.execute(repo.expired_leases_stmt(now=now, limit=BATCH)))
    for job_id, attempts in expired:
        extra: dict[str, Any]
        if attempts >= ctx.settings.job_max_attempts:
            target, extra = JobStatus.failed, {
                "completed_at": now, "lease_expires_at": None, "error_code": "attempts_exhausted",
                "error_message": f"the job was attempted {attempts} times and never finished; it may be "
                "too large or crash the worker",
            }
        else:
            target, extra = JobStatus.queued, {"lease_expires_at": None, "dispatched_at": None}
        stmt = repo.transition_stmt(job_id, JobStatus.running, target, now=now, attempt=attempts, **extra)
        try:
            with ctx.engine.begin() as conn:
                repo.transition_sync(conn, stmt)
                record_transition(conn, job_id, target)  # webhook outbox (job.failed), same transaction
        except repo.StaleTransition:
            continue  # finished or swept by someone else meanwhile
        if target is JobStatus.failed:
            report.exhausted.append(str(job_id))
            ctx.notifier.job_changed(str(job_id))  # terminal: what a Prefer: wait request waits for
        else:
            report.requeued.append(str(job_id))


def _return_stale_to_dispatcher(ctx: WorkerContext, now: datetime, report: SweepReport) -> None:
    before = now - timedelta(seconds=ctx.settings.redispatch_after_s)
    with ctx.engine.begin() as conn:
        returned = conn.execute(repo.undispatch_stale_stmt(dispatched_before=before)).scalars()
        report.republished.extend(str(job_id) for job_id in returned)


def _purge_expired(ctx: WorkerContext, now: datetime, report: SweepReport) -> None:
    before = now - timedelta(days=ctx.settings.retention_days)
    with ctx.engine.begin() as conn:
        conn.execute(purge_expired_stmt(created_before=now - timedelta(seconds=ctx.settings.idempotency_ttl_s)))
        report.purged += conn.execute(repo.purge_finished_stmt(completed_before=before, limit=BATCH)).rowcount


def sweep_once(ctx: WorkerContext) -> SweepReport:
    report = SweepReport()
    now = datetime.now(UTC)
    _take_back_expired(ctx, now, report)
    _return_stale_to_dispatcher(ctx, now, report)
    _purge_expired(ctx, now, report)
    if report.requeued or report.republished:
        ctx.wake_dispatcher()
    if report.republished or report.requeued or report.exhausted:
        log.info(
            "sweep: republished %d, requeued %d, exhausted %d",
            len(report.republished), len(report.requeued), len(report.exhausted),
        )
    return report
