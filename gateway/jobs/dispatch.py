"""Telling the workers' dispatchers that new jobs wait, without blocking the event loop.

The gateway does not publish jobs to the broker itself: jobs wait in the database and the
workers' fair dispatcher feeds the broker (workers/dispatcher.py). After a commit the gateway
only nudges the dispatchers; nudges are coalesced, so a burst of submissions costs a handful
of Redis PUBLISHes, not one per job. A lost nudge costs at most one dispatch interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import redis.asyncio as aioredis

from medparse.events import dispatch_channel, dispatch_socket_path
from medparse.queue import embedded_queue_dir
from medparse.settings import Settings

log = logging.getLogger(__name__)


class DispatchNudger:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._pending = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._redis = aioredis.Redis.from_url(settings.redis_url) if settings.redis_url else None
        self._sock: socket.socket | None = None
        if self._redis is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="dispatch-nudger")

    def nudge(self) -> None:
        self._pending.set()

    async def _run(self) -> None:
        while True:
            await self._pending.wait()
            self._pending.clear()
            await self._send()

    async def _send(self) -> None:
        try:
            if self._redis is not None:
                await self._redis.publish(dispatch_channel(self._settings), b"1")
            elif self._sock is not None:
                self._sock.sendto(b"1", str(dispatch_socket_path(self._settings)))
        except (OSError, aioredis.RedisError) as exc:
            # No dispatcher listening (or Redis away): the periodic dispatch round picks the job up.
            log.debug("dispatch nudge not delivered (%s)", type(exc).__name__)

    async def check(self) -> str:
        if self._redis is None:
            return "ok" if embedded_queue_dir(self._settings).is_dir() else "unavailable: queue folder missing"
        try:
            await asyncio.wait_for(self._redis.ping(), timeout=2)
            return "ok"
        except Exception as exc:  # any failure means not ready
            return f"unavailable: {type(exc).__name__}"

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pending.is_set():
            await self._send()
        if self._redis is not None:
            await self._redis.aclose()
        if self._sock is not None:
            self._sock.close()
