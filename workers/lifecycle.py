"""A worker's database steps for one job: claim, keep the lease, finish or fail.

Each step is one short transaction and every status change is a compare-and-set pinned to the
attempt that claimed the job, so a redelivered or late worker can never overwrite a newer truth.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from db import jobs as repo
from db import medical as medical_repo
from db.job_record import Job, MaskSummary
from db.job_snapshot import encode_snapshot
from db.outbox import record_transition
from db.status import JobStatus
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


@dataclass(frozen=True)
class Ended:
    """A job this worker moved to a terminal state."""

    #: the committed row for the completion notification (db/job_snapshot.py); None if too large
    snapshot: bytes | None


def claim(engine: Engine, job_id: uuid.UUID, lease_s: float) -> Claim | None:
    """queued -> running; None when the job is not (or no longer) queued."""
    now = utcnow()
    with engine.begin() as conn:
        # The compare-and-set returns what the job needs: no second read of the jobs row.
        lease_until = now + timedelta(seconds=lease_s)
        row = conn.execute(repo.CLAIM, repo.claim_params(job_id, now=now, lease_until=lease_until)).first()
        if row is None:
            return None
        if row.image is None:
            raise RuntimeError(f"job {job_id} has no stored input")  # rolled back: the job stays queued
        record_transition(conn, job_id, JobStatus.running, job=row._mapping)  # webhook outbox, same transaction
    job = Job.from_row(row._mapping)
    return Claim(
        job_id=job_id, attempt=job.attempts, prompts=list(job.prompts), image=row.image,
        options=dict(job.options or {}),
    )


def finish(
    engine: Engine, claimed: Claim, result: Segmentation, *, delete_input: bool = False
) -> Ended | None:
    """Store the masks and move running -> succeeded in one transaction.

    None when the job was canceled or taken over meanwhile: the result is discarded (rolled back).
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
    params = {
        "job_id": claimed.job_id, "attempt": claimed.attempt, "now": now, "new_result_width": result.width,
        "new_result_height": result.height, "new_result_meta": result.provenance,
        "calls": result.provenance["endpoint_http_attempts"], "seconds": result.provenance["endpoint_seconds"],
    }
    try:
        with engine.begin() as conn:
            changed = repo.transition_sync(conn, repo.SUCCEED, params)
            # No DELETE first: masks (and the medical row) are only written here, in the transaction
            # that makes the job succeeded (terminal), so a running attempt never finds any.
            if rows:
                conn.execute(repo.INSERT_MASKS, rows)
            if result.medical is not None:  # DICOM/NIfTI source header, a volume's masks (db/medical.py)
                conn.execute(medical_repo.insert_medical_stmt(claimed.job_id, result.medical))
            if delete_input:
                conn.execute(repo.delete_input_stmt(claimed.job_id))
            # webhook outbox, same transaction; the payload lists the masks
            record_transition(conn, claimed.job_id, JobStatus.succeeded, masks=rows, job=changed)
    except repo.StaleTransition:
        log.info("job %s attempt %d: result discarded (job canceled or taken over)", claimed.job_id, claimed.attempt)
        return None
    return Ended(encode_snapshot(Job.from_row(changed), [MaskSummary.from_row(m) for m in rows]))


def fail(
    engine: Engine, claimed: Claim, code: str, message: str, *, endpoint_calls: int = 0, endpoint_seconds: float = 0.0
) -> Ended | None:
    """running -> failed; None when the job was canceled or taken over meanwhile."""
    now = utcnow()
    params = {
        "job_id": claimed.job_id, "attempt": claimed.attempt, "now": now, "new_error_code": code,
        "new_error_message": message[:2000], "calls": endpoint_calls, "seconds": endpoint_seconds,
    }
    try:
        with engine.begin() as conn:
            changed = repo.transition_sync(conn, repo.FAIL, params)
            record_transition(conn, claimed.job_id, JobStatus.failed, job=changed)  # webhook outbox, same transaction
    except repo.StaleTransition:
        return None
    return Ended(encode_snapshot(Job.from_row(changed), []))


class LeaseKeeper:
    """Extends the job's lease every ``interval_s`` while the work runs (a heartbeat).

    For ``renew_for_s`` (the task's hard time limit) at most: a thread stuck past it (a hung call
    no deadline reached; the threads pool enforces no Celery time limit) then lets its lease run
    out, and the sweeper re-queues the job or fails it ``attempts_exhausted``, at most
    ``renew_for_s + lease_s`` after the claim. The stuck thread's
    late writes are pinned to its attempt and discarded.
    """

    def __init__(
        self, engine: Engine, claimed: Claim, lease_s: float, interval_s: float, *, renew_for_s: float | None = None
    ) -> None:
        self._engine = engine
        self._claimed = claimed
        self._lease_s = lease_s
        self._interval_s = interval_s
        self._renew_until = None if renew_for_s is None else time.monotonic() + renew_for_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{claimed.job_id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # No join: the thread ends at once, and waiting for it delayed the job's notification by
        # ~0.5 ms. A heartbeat racing the end changes nothing: it only extends a running attempt.
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            if self._renew_until is not None and time.monotonic() >= self._renew_until:
                log.warning(
                    "job %s attempt %d passed its time limit: no more heartbeats, the sweeper takes it back",
                    self._claimed.job_id, self._claimed.attempt,
                )
                return
            until = utcnow() + timedelta(seconds=self._lease_s)
            try:
                with self._engine.begin() as conn:
                    conn.execute(repo.extend_lease_stmt(self._claimed.job_id, self._claimed.attempt, lease_until=until))
            except Exception as exc:  # the database is briefly away: the lease margin covers it
                log.warning("lease heartbeat for job %s failed: %s", self._claimed.job_id, type(exc).__name__)
