"""Telling the workers' dispatchers that new jobs wait, without blocking the event loop.

The gateway does not publish jobs to the broker itself: jobs wait in the database and the
workers' fair dispatcher feeds the broker (workers/dispatcher.py). After a commit the gateway
only nudges the dispatchers; nudges are coalesced, so a burst of submissions costs a handful
of PUBLISHes (medparse/async_events.py), not one per job. A lost nudge costs at most one
dispatch interval.
"""

from __future__ import annotations

import asyncio
import contextlib

from medparse.backends import async_job_events, job_queue
from medparse.settings import Settings


class DispatchNudger:
    def __init__(self, settings: Settings) -> None:
        self._pending = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._events = async_job_events(settings)
        self._queue = job_queue(settings)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="dispatch-nudger")

    def nudge(self) -> None:
        self._pending.set()

    async def _run(self) -> None:
        while True:
            await self._pending.wait()
            self._pending.clear()
            # Undelivered (no dispatcher listening, Redis away): the periodic dispatch round picks the job up.
            await self._events.nudge_dispatchers()

    async def check(self) -> str:
        """The queue's readiness: ``ok`` or ``unavailable: <reason>``."""
        return await self._queue.check()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pending.is_set():
            await self._events.nudge_dispatchers()
        await self._events.close()
        await self._queue.close()
