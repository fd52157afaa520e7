"""The gateway's side of the job events (see medparse/events.py), on the event loop.

``AsyncJobEvents`` receives job changes (to wake ``Prefer: wait`` requests), announces a change
the gateway made itself to the other gateway processes, and nudges the workers' dispatchers.
Chosen once at start-up (medparse/backends.py): Redis pub/sub, or datagram sockets in the data
directory (the embedded default, one gateway process). Every method swallows its transport's
errors: a lost message only delays, Postgres stays the truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import redis.asyncio as aioredis

from medparse.events import decode_event, dispatch_channel, dispatch_socket_path, events_channel, events_socket_path
from medparse.settings import Settings

log = logging.getLogger(__name__)

#: called with (job id, snapshot of the committed terminal job or None) for each job change
OnJobChanged = Callable[[str, bytes | None], None]


class AsyncJobEvents(Protocol):
    async def start(self, on_job_changed: OnJobChanged) -> None:
        """Start receiving job changes (once; an instance that only nudges never starts)."""
        ...

    async def announce(self, job_id: str) -> None:
        """Tell the other gateway processes (this one's waiters are woken by the caller)."""
        ...

    async def nudge_dispatchers(self) -> None: ...

    async def close(self) -> None: ...


class RedisAsyncJobEvents:
    def __init__(self, redis_url: str, settings: Settings) -> None:
        self._url = redis_url
        self._publisher = aioredis.Redis.from_url(redis_url)
        self._events = events_channel(settings)
        self._dispatch = dispatch_channel(settings)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self, on_job_changed: OnJobChanged) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen(on_job_changed), name="job-events")

    async def _listen(self, on_job_changed: OnJobChanged) -> None:
        # Polled with a short timeout and a stop flag rather than cancelled inside listen():
        # redis-py's async pub/sub can swallow a cancellation there and hang the shutdown.
        while not self._stopping:
            client = aioredis.Redis.from_url(self._url)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(self._events)
                    while not self._stopping:
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.25)
                        if message is not None and message.get("type") == "message":
                            on_job_changed(*decode_event(message["data"]))
            except Exception as exc:  # redis restarted: waiters fall back to re-checks meanwhile
                log.warning("job event subscription lost (%s); reconnecting", type(exc).__name__)
                await asyncio.sleep(1.0)
            finally:
                await client.aclose()

    async def announce(self, job_id: str) -> None:
        try:
            await self._publisher.publish(self._events, job_id)
        except Exception as exc:  # other gateways fall back to their safety re-check
            log.warning("job event not published (%s)", type(exc).__name__)

    async def nudge_dispatchers(self) -> None:
        try:
            await self._publisher.publish(self._dispatch, b"1")
        except (OSError, aioredis.RedisError) as exc:
            # Redis away: the periodic dispatch round picks the job up.
            log.debug("dispatch nudge not delivered (%s)", type(exc).__name__)

    async def close(self) -> None:
        self._stopping = True
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=5)
            except (TimeoutError, asyncio.CancelledError):
                log.warning("job event subscription did not stop in time")
        await self._publisher.aclose()


class _DatagramProtocol(asyncio.DatagramProtocol):
    def __init__(self, on_job_changed: OnJobChanged) -> None:
        self._on_job_changed = on_job_changed

    def datagram_received(self, data: bytes, addr: object) -> None:
        self._on_job_changed(*decode_event(data))


class SocketAsyncJobEvents:
    """The embedded default: one gateway process, so announcing to other gateways is a no-op."""

    def __init__(self, settings: Settings) -> None:
        self._events: Path = events_socket_path(settings)
        self._dispatch = str(dispatch_socket_path(settings))
        self._sock: socket.socket | None = None
        self._transport: asyncio.BaseTransport | None = None

    async def start(self, on_job_changed: OnJobChanged) -> None:
        self._events.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._events)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self._events))
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _DatagramProtocol(on_job_changed), sock=sock
        )

    async def announce(self, job_id: str) -> None:
        return None

    async def nudge_dispatchers(self) -> None:
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
        try:
            self._sock.sendto(b"1", self._dispatch)
        except OSError as exc:
            # No dispatcher listening: the periodic dispatch round picks the job up.
            log.debug("dispatch nudge not delivered (%s)", type(exc).__name__)

    async def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        if self._transport is not None:
            self._transport.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._events)
