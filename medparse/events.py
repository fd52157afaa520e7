"""Job completion notifications, so ``Prefer: wait`` wakes at once instead of polling.

Production: Redis PUBLISH on one channel per namespace. Embedded: a UNIX datagram socket in the
data directory that the gateway listens on. A lost notification only delays a waiter until its
safety re-check; it never loses a job (Postgres stays the truth). The same two transports carry
the nudges to the workers' dispatchers. This module is the workers' (synchronous) side;
medparse/async_events.py is the gateway's; medparse/backends.py picks one of each at start-up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import redis

from medparse.settings import Settings

log = logging.getLogger(__name__)


def events_channel(settings: Settings) -> str:
    return f"{settings.redis_namespace}:job-events"


def events_socket_path(settings: Settings) -> Path:
    return (settings.data_dir / "job-events.sock").resolve()


def dispatch_channel(settings: Settings) -> str:
    """Nudges for the workers' dispatchers: a job was submitted or a slot freed up."""
    return f"{settings.redis_namespace}:dispatch"


def dispatch_socket_path(settings: Settings) -> Path:
    return (settings.data_dir / "dispatch.sock").resolve()


def encode_event(job_id: str, snapshot: bytes | None = None) -> bytes:
    """``<job id>`` or ``<job id>\n<snapshot>`` (db/job_snapshot.py: the committed terminal job)."""
    return job_id.encode() if not snapshot else job_id.encode() + b"\n" + snapshot


def decode_event(message: bytes) -> tuple[str, bytes | None]:
    job_id, _, snapshot = message.partition(b"\n")
    return job_id.decode(errors="replace"), snapshot or None


class JobEvents(Protocol):
    """The workers' side of the events: job status changes out, dispatch wake-ups in.

    Chosen once at start-up (medparse/backends.py): Redis pub/sub, or datagram sockets in the
    data directory (the embedded default). A lost message only delays: Postgres stays the truth.
    """

    def job_changed(self, job_id: str, snapshot: bytes | None = None) -> None:
        """Tell the gateways' waiters that the job changed (``snapshot``: the terminal job)."""
        ...

    def listen_for_dispatch(self, wake: Callable[[], None], stopped: threading.Event) -> None:
        """Call ``wake`` on every dispatch nudge until ``stopped`` is set (blocks: run it in a thread)."""
        ...


class RedisJobEvents:
    def __init__(self, redis_url: str, settings: Settings) -> None:
        self._url = redis_url
        self._client = redis.Redis.from_url(redis_url)
        self._events = events_channel(settings)
        self._dispatch = dispatch_channel(settings)

    def job_changed(self, job_id: str, snapshot: bytes | None = None) -> None:
        try:
            self._client.publish(self._events, encode_event(job_id, snapshot))
        except redis.RedisError:
            log.warning("job event for %s not published (redis unavailable)", job_id)

    def listen_for_dispatch(self, wake: Callable[[], None], stopped: threading.Event) -> None:
        while not stopped.is_set():
            try:
                # The client and its pub/sub connection close on every exit, also after an error.
                with redis.Redis.from_url(self._url) as client, client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    pubsub.subscribe(self._dispatch)
                    while not stopped.is_set():
                        if pubsub.get_message(timeout=0.5) is not None:
                            wake()
            except redis.RedisError as exc:
                log.warning("dispatch listener lost redis (%s); retrying", type(exc).__name__)
                stopped.wait(1.0)


class SocketJobEvents:
    """The embedded default: the gateway listens on one socket, the worker's dispatcher on another."""

    def __init__(self, settings: Settings) -> None:
        self._events = str(events_socket_path(settings))
        self._dispatch = dispatch_socket_path(settings)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def job_changed(self, job_id: str, snapshot: bytes | None = None) -> None:
        try:
            self._sock.sendto(encode_event(job_id, snapshot), self._events)
        except OSError:
            # No gateway listening (or its buffer is full): waiters fall back to their re-check.
            pass

    def listen_for_dispatch(self, wake: Callable[[], None], stopped: threading.Event) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._dispatch)
        try:
            sock.bind(str(self._dispatch))
        except OSError as exc:  # another embedded worker listens already; periodic rounds still run
            log.info("dispatch socket unavailable (%s); relying on periodic rounds", exc)
            sock.close()
            return
        sock.settimeout(0.5)
        with sock:
            while not stopped.is_set():
                with contextlib.suppress(TimeoutError):
                    sock.recv(64)
                    wake()
