"""Production services or the embedded default, chosen once at start-up from Settings.

This is the one place that asks ``settings.embedded`` for the queue and the events (the dispatch
round is chosen from the database engine in db/dispatch.py): Redis for both in production; in
the embedded default, kombu's filesystem transport under the data directory and datagram
sockets beside it. Everything else talks to the ports (``JobQueue``, ``JobEvents``,
``AsyncJobEvents``) and never learns which one it has.
"""

from __future__ import annotations

import redis

from medparse.async_events import AsyncJobEvents, RedisAsyncJobEvents, SocketAsyncJobEvents
from medparse.events import JobEvents, RedisJobEvents, SocketJobEvents
from medparse.queue import FolderJobQueue, JobQueue, RedisJobQueue
from medparse.settings import Settings


def job_queue(settings: Settings) -> JobQueue:
    if settings.redis_url is None:
        return FolderJobQueue(settings)
    return RedisJobQueue(settings, settings.redis_url)


def job_events(settings: Settings) -> JobEvents:
    """The workers' side (synchronous)."""
    if settings.redis_url is None:
        return SocketJobEvents(settings)
    return RedisJobEvents(settings.redis_url, settings)


def async_job_events(settings: Settings) -> AsyncJobEvents:
    """The gateway's side (on its event loop)."""
    if settings.redis_url is None:
        return SocketAsyncJobEvents(settings)
    return RedisAsyncJobEvents(settings.redis_url, settings)


def shared_redis(settings: Settings) -> redis.Redis | None:
    """Where the workers' shared counters live (the endpoint's in-flight limiter, webhook slots);
    None when embedded: one worker process, so those count in memory."""
    if settings.redis_url is None:
        return None
    return redis.Redis.from_url(settings.redis_url)
