"""A worker's database steps for one job: claim, keep the lease, finish or fail.

Each step is one short transaction and every status change is a compare-and-set pinned to the
attempt that claimed the job, so a redelivered or late worker can never overwrite a newer truth.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from db import jobs as repo
from db import medical as medical_repo
from db.status import JobStatus
from medparse.webhooks.outbox import record_transition
from workers.pipeline import Segmentation

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Claim:
    job_id: uuid.UUID
    attempt: int
    prompts: list[str]
    image: bytes
    #: the job's options (window, frame, slices, model: medparse.medical.options)
    options: dict[str, Any] = field(default_factory=dict)


def claim(engine: Engine, job_id: uuid.UUID, lease_s: float) -> Claim | None:
    """queued -> running; None when the job is not (or no longer) queued."""
    now = utcnow()
    with engine.begin() as conn:
        # The compare-and-set returns what the job needs: no second read of the jobs row.
        row = conn.execute(
            repo.claim_stmt(job_id, now=now, lease_until=now + timedelta(seconds=lease_s))
        ).first()
        if row is None:
            return None
        record_transition(conn, job_id, JobStatus.running)  # webhook outbox, same transaction
        image = conn.execute(repo.select_input(job_id)).scalar_one()
    return Claim(
        job_id=job_id, attempt=row.attempts, prompts=list(row.prompts), image=image, options=dict(row.options or {})
    )


def finish(engine: Engine, claimed: Claim, result: Segmentation, *, delete_input: bool = False) -> bool:
    """Store the masks and move running -> succeeded in one transaction.

    False when the job was canceled or taken over meanwhile: the result is discarded (rolled back).
    """
    now = utcnow()
    rows = [
        {
            "job_id": claimed.job_id, "index": m.index, "prompt": m.prompt, "label": m.label,
            "area_px": m.area_px, "bbox": m.bbox, "height": m.height, "width": m.width,
            "encoding": result.provenance["mask_encoding"], "data": m.data,
        }
        for m in result.masks
    ]
    stmt = repo.transition_stmt(
        claimed.job_id, JobStatus.running, JobStatus.succeeded, now=now, attempt=claimed.attempt,
        completed_at=now, lease_expires_at=None, result_width=result.width, result_height=result.height,
        result_meta=result.provenance, error_code=None, error_message=None,
        **repo.add_endpoint_usage_values(
            result.provenance["endpoint_http_attempts"], result.provenance["endpoint_seconds"]
        ),
    )
    try:
        with engine.begin() as conn:
            repo.transition_sync(conn, stmt)
            # No DELETE first: masks are only written here, in the transaction that makes the job
            # succeeded (terminal), so a running attempt never finds any.
            conn.execute(repo.insert_masks_stmt(rows))
            if result.medical is not None:  # DICOM/NIfTI source header, a volume's masks (db/medical.py)
                conn.execute(medical_repo.delete_medical_stmt(claimed.job_id))
                conn.execute(medical_repo.insert_medical_stmt(claimed.job_id, result.medical))
            if delete_input:
                conn.execute(repo.delete_input_stmt(claimed.job_id))
            record_transition(conn, claimed.job_id, JobStatus.succeeded)  # webhook outbox, same transaction
    except repo.StaleTransition:
        log.info("job %s attempt %d: result discarded (job canceled or taken over)", claimed.job_id, claimed.attempt)
        return False
    return True


def fail(
    engine: Engine, claimed: Claim, code: str, message: str, *, endpoint_calls: int = 0, endpoint_seconds: float = 0.0
) -> bool:
    now = utcnow()
    stmt = repo.transition_stmt(
        claimed.job_id, JobStatus.running, JobStatus.failed, now=now, attempt=claimed.attempt,
        completed_at=now, lease_expires_at=None, error_code=code, error_message=message[:2000],
        **repo.add_endpoint_usage_values(endpoint_calls, endpoint_seconds),
    )
    try:
        with engine.begin() as conn:
            repo.transition_sync(conn, stmt)
            record_transition(conn, claimed.job_id, JobStatus.failed)  # webhook outbox, same transaction
    except repo.StaleTransition:
        return False
    return True


class LeaseKeeper:
    """Extends the job's lease every ``interval_s`` while the work runs (a heartbeat)."""

    def __init__(self, engine: Engine, claimed: Claim, lease_s: float, interval_s: float) -> None:
        self._engine = engine
        self._claimed = claimed
        self._lease_s = lease_s
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{claimed.job_id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            until = utcnow() + timedelta(seconds=self._lease_s)
            try:
                with self._engine.begin() as conn:
                    conn.execute(repo.extend_lease_stmt(self._claimed.job_id, self._claimed.attempt, lease_until=until))
            except Exception as exc:  # the database is briefly away: the lease margin covers it
                log.warning("lease heartbeat for job %s failed: %s", self._claimed.job_id, type(exc).__name__)
