"""Per-process worker resources, built once from Settings (after fork, never at import)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import redis
from celery import Celery
from sqlalchemy import Engine

from db.engine import make_sync_engine
from medparse.endpoint.client import EndpointClient
from medparse.endpoint.limiter import InFlightLimiter, LocalInFlightLimiter, RedisInFlightLimiter
from medparse.events import JobEventNotifier, make_notifier
from medparse.settings import Settings


@dataclass
class WorkerContext:
    settings: Settings
    engine: Engine
    client: EndpointClient
    notifier: JobEventNotifier
    app: Celery


def make_limiter(settings: Settings) -> InFlightLimiter:
    if settings.redis_url is None:
        return LocalInFlightLimiter(settings.endpoint_max_in_flight)
    # The lease must outlive the longest single HTTP attempt, or a slow call's slot is handed out twice.
    return RedisInFlightLimiter(
        redis.Redis.from_url(settings.redis_url),
        key=f"{settings.redis_namespace}:endpoint-inflight",
        limit=settings.endpoint_max_in_flight,
        lease_s=settings.endpoint_read_timeout_s + settings.endpoint_connect_timeout_s + 5,
    )


class ContextHolder:
    """Builds the context lazily, once per process id, so a forked child never reuses sockets."""

    def __init__(self, settings: Settings, app: Celery) -> None:
        self._settings = settings
        self._app = app
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._context: WorkerContext | None = None

    def get(self) -> WorkerContext:
        with self._lock:
            if self._context is None or self._pid != os.getpid():
                settings = self._settings
                self._context = WorkerContext(
                    settings=settings,
                    engine=make_sync_engine(settings),
                    client=EndpointClient(settings, limiter=make_limiter(settings)),
                    notifier=make_notifier(settings),
                    app=self._app,
                )
                self._pid = os.getpid()
            return self._context
