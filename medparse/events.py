"""Job completion notifications, so ``Prefer: wait`` wakes at once instead of polling.

Production: Redis PUBLISH on one channel per namespace. Embedded: a UNIX datagram socket in the
data directory that the gateway listens on. A lost notification only delays a waiter until its
safety re-check; it never loses a job (Postgres stays the truth).
"""

from __future__ import annotations

import logging
import socket
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


class JobEventNotifier(Protocol):
    def job_changed(self, job_id: str, snapshot: bytes | None = None) -> None: ...


class RedisJobEventNotifier:
    def __init__(self, client: redis.Redis, channel: str) -> None:
        self._client = client
        self._channel = channel

    def job_changed(self, job_id: str, snapshot: bytes | None = None) -> None:
        try:
            self._client.publish(self._channel, encode_event(job_id, snapshot))
        except redis.RedisError:
            log.warning("job event for %s not published (redis unavailable)", job_id)


class SocketJobEventNotifier:
    def __init__(self, path: Path) -> None:
        self._path = str(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def job_changed(self, job_id: str, snapshot: bytes | None = None) -> None:
        try:
            self._sock.sendto(encode_event(job_id, snapshot), self._path)
        except OSError:
            # No gateway listening (or its buffer is full): waiters fall back to their re-check.
            pass


def make_notifier(settings: Settings) -> JobEventNotifier:
    if settings.redis_url is None:
        return SocketJobEventNotifier(events_socket_path(settings))
    return RedisJobEventNotifier(redis.Redis.from_url(settings.redis_url), events_channel(settings))
