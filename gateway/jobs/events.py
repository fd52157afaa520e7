"""Listening for job-change notifications (medparse/async_events.py) and waking waiters."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Iterator

from medparse.backends import async_job_events
from medparse.settings import Settings

#: A waiter re-reads the job this often even without a notification, in case one was lost.
SAFETY_RECHECK_S = 2.0


class JobWaiter:
    def __init__(self) -> None:
        self._event = asyncio.Event()
        #: the committed terminal job, when the notification carried it (db/job_snapshot.py)
        self.snapshot: bytes | None = None

    def notify(self, snapshot: bytes | None = None) -> None:
        self.snapshot = snapshot
        self._event.set()

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), min(timeout, SAFETY_RECHECK_S))
        self._event.clear()


class JobEventListener:
    def __init__(self, settings: Settings) -> None:
        self._waiters: dict[str, set[JobWaiter]] = defaultdict(set)
        self._events = async_job_events(settings)

    @contextlib.contextmanager
    def subscribe(self, job_id: str) -> Iterator[JobWaiter]:
        waiter = JobWaiter()
        self._waiters[job_id].add(waiter)
        try:
            yield waiter
        finally:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[job_id]

    def dispatch(self, job_id: str, snapshot: bytes | None = None) -> None:
        for waiter in self._waiters.get(job_id, ()):
            waiter.notify(snapshot)

    async def announce(self, job_id: str) -> None:
        """Wake waiters here at once, and (in production) those of other gateway processes."""
        self.dispatch(job_id)
        await self._events.announce(job_id)

    async def start(self) -> None:
        await self._events.start(self.dispatch)

    async def close(self) -> None:
        await self._events.close()
