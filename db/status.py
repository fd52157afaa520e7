"""The job state machine: one table of allowed transitions, nothing else.

Pure module: no SQLAlchemy, aiohttp or Celery imports. Every status change in the system is
checked here and then written as a compare-and-set UPDATE (see ``db.jobs.transition``).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class JobStatus(StrEnum):
    #: stored in Postgres, waiting for a worker (possibly not yet published to the broker)
    queued = "queued"
    #: claimed by a worker that holds a lease on it
    running = "running"
    #: masks and labels stored
    succeeded = "succeeded"
    #: ended with an error code a user can act on
    failed = "failed"
    #: canceled by the client; a late result is discarded
    canceled = "canceled"


TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    # queued -> failed: the sweeper gives up on a job that used all its attempts.
    JobStatus.queued: frozenset({JobStatus.running, JobStatus.canceled, JobStatus.failed}),
    # running -> queued: the lease expired (the worker died); the sweeper re-queues the job.
    JobStatus.running: frozenset(
        {JobStatus.succeeded, JobStatus.failed, JobStatus.canceled, JobStatus.queued}
    ),
    JobStatus.succeeded: frozenset(),
    JobStatus.failed: frozenset(),
    JobStatus.canceled: frozenset(),
}

TERMINAL: frozenset[JobStatus] = frozenset(s for s, targets in TRANSITIONS.items() if not targets)
CANCELABLE: frozenset[JobStatus] = frozenset(
    s for s, targets in TRANSITIONS.items() if JobStatus.canceled in targets
)


class InvalidTransition(Exception):
    def __init__(self, current: JobStatus, target: JobStatus) -> None:
        super().__init__(f"a {current} job cannot become {target}")
        self.current = current
        self.target = target


def check_transition(current: JobStatus, target: JobStatus) -> None:
    """Raise ``InvalidTransition`` unless ``current -> target`` is in the table."""
    if target not in TRANSITIONS[current]:
        raise InvalidTransition(current, target)


def is_terminal(status: JobStatus) -> bool:
    return status in TERMINAL
