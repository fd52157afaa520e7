"""Fair dispatch: jobs wait in the database, and this feeds the broker round-robin by tenant.

Which jobs go next, and marking them dispatched, is the database's ``DispatchRound``
(db/dispatch.py: the broker never holds more than ``dispatch_window`` unclaimed jobs; each round
takes the first job of every tenant with room under its running cap, then the second, ...).
This module publishes what a round marked and runs the loop.

One dispatcher thread runs in every worker process; with PostgreSQL an advisory lock lets one of
them dispatch at a time. Rounds run when nudged (a new job, a finished job; the nudges arrive
through ``JobEvents``, medparse/events.py) and every ``dispatch_interval_s`` regardless, so a
lost nudge only delays.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from medparse.queue import SEGMENT_TASK
from workers.context import WorkerContext

log = logging.getLogger(__name__)


def dispatch_round(ctx: WorkerContext) -> list[str] | None:
    """Publish the next fair batch. None when another dispatcher holds the lock right now."""
    settings = ctx.settings
    now = datetime.now(UTC)
    ids = ctx.dispatch_round.mark_next_batch(
        window=settings.dispatch_window, default_cap=settings.tenant_max_running_jobs, now=now
    )
    if ids is None:
        return None
    published: list[str] = []
    for job_id in ids:
        try:
            ctx.app.send_task(SEGMENT_TASK, args=[str(job_id)], task_id=str(job_id))
            published.append(str(job_id))
        except Exception as exc:  # broker down: hand the job back to the next round
            log.warning("publishing job %s failed (%s)", job_id, type(exc).__name__)
            ctx.dispatch_round.hand_back(job_id, dispatched_at=now)
    return published


class Dispatcher:
    """The dispatch loop of one worker process, plus the listener that wakes it."""

    def __init__(self, get_context: Callable[[], WorkerContext]) -> None:
        self._get_context = get_context
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        ctx = self._get_context()
        self._threads = [
            threading.Thread(target=self._loop, name="dispatcher", daemon=True),
            threading.Thread(target=self._listen, args=(ctx,), name="dispatch-listener", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()

    def _loop(self) -> None:
        interval = self._get_context().settings.dispatch_interval_s
        while not self._stopped.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            try:
                if dispatch_round(self._get_context()) is None:
                    # Another process holds the lock and may have started before our nudge's job
                    # was committed: look again shortly rather than at the next interval.
                    self._stopped.wait(0.02)
                    self._wake.set()
            except Exception as exc:  # database away: the next round tries again
                log.warning("dispatch round failed: %s", type(exc).__name__)
                self._stopped.wait(1.0)

    def _listen(self, ctx: WorkerContext) -> None:
        ctx.notifier.listen_for_dispatch(self._wake.set, self._stopped)
