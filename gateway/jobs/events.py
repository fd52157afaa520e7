"""Listening for job-change notifications (see ``medparse.events``) and waking waiters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections import defaultdict
from collections.abc import Iterator

import redis.asyncio as aioredis

from medparse.events import decode_event, events_channel, events_socket_path
from medparse.settings import Settings

log = logging.getLogger(__name__)

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


class _DatagramProtocol(asyncio.DatagramProtocol):
    def __init__(self, listener: JobEventListener) -> None:
        self._listener = listener

    def datagram_received(self, data: bytes, addr: object) -> None:
        self._listener.dispatch(*decode_event(data))


class JobEventListener:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._waiters: dict[str, set[JobWaiter]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self._transport: asyncio.BaseTransport | None = None
        self._stopping = False
        self._publisher = aioredis.Redis.from_url(settings.redis_url) if settings.redis_url else None

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
        if self._publisher is not None:
            try:
                await self._publisher.publish(events_channel(self._settings), job_id)
            except Exception as exc:  # other gateways fall back to their safety re-check
                log.warning("job event not published (%s)", type(exc).__name__)

    async def start(self) -> None:
        if self._settings.redis_url is None:
            await self._start_socket()
        else:
            self._task = asyncio.get_running_loop().create_task(self._redis_loop(), name="job-events")

    async def _start_socket(self) -> None:
        path = events_socket_path(self._settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: _DatagramProtocol(self), sock=sock)

    async def _redis_loop(self) -> None:
        assert self._settings.redis_url is not None
        channel = events_channel(self._settings)
        # Polled with a short timeout and a stop flag rather than cancelled inside listen():
        # redis-py's async pub/sub can swallow a cancellation there and hang the shutdown.
        while not self._stopping:
            client = aioredis.Redis.from_url(self._settings.redis_url)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(channel)
                    while not self._stopping:
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.25)
                        if message is not None and message.get("type") == "message":
                            self.dispatch(*decode_event(message["data"]))
            except Exception as exc:  # redis restarted: waiters fall back to re-checks meanwhile
                log.warning("job event subscription lost (%s); reconnecting", type(exc).__name__)
                await asyncio.sleep(1.0)
            finally:
                await client.aclose()

    async def close(self) -> None:
        self._stopping = True
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=5)
            except (TimeoutError, asyncio.CancelledError):
                log.warning("job event subscription did not stop in time")
        if self._publisher is not None:
            await self._publisher.aclose()
        if self._transport is not None:
            self._transport.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(events_socket_path(self._settings))
