"""Per-process worker resources, built once from Settings (after fork, never at import)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from celery import Celery
from sqlalchemy import Engine

from db.dispatch import DispatchRound, make_dispatch_round
from db.engine import make_sync_engine
from medparse.backends import job_events, shared_redis
from medparse.decode_pool import DEFAULT_PRELOAD, DecodePool
from medparse.endpoint.client import EndpointClient
from medparse.endpoint.client3d import make_client_3d
from medparse.endpoint.limiter import make_in_flight_limiter
from medparse.events import JobEvents
from medparse.settings import Settings
from workers.batching import RowBatcher


@dataclass
class WorkerContext:
    settings: Settings
    engine: Engine
    client: EndpointClient
    batcher: RowBatcher
    #: job changes out to the gateways, dispatch nudges in (Redis, or sockets when embedded)
    notifier: JobEvents
    #: the fair dispatch round for this database (PostgreSQL or the embedded SQLite)
    dispatch_round: DispatchRound
    app: Celery
    #: wakes this process's dispatcher (a worker slot freed up, or the sweeper returned jobs)
    wake_dispatcher: Callable[[], None]
    #: the MedImageParse 3D client (medparse/endpoint/client3d.py); None when not configured
    client_3d: EndpointClient | None = None
    #: where a job's input is decoded, within the decode budget (workers/decode_steps.py); None decodes in
    #: the calling thread (unit tests of the reading itself)
    decoder: DecodePool | None = None


class ContextHolder:
    """Builds the context lazily, once per process id, so a forked child never reuses sockets."""

    def __init__(self, settings: Settings, app: Celery, wake_dispatcher: Callable[[], None] = lambda: None) -> None:
        self._settings = settings
        self._app = app
        self._wake_dispatcher = wake_dispatcher
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._context: WorkerContext | None = None

    def get(self) -> WorkerContext:
        with self._lock:
            if self._context is None or self._pid != os.getpid():
                settings = self._settings
                redis_client = shared_redis(settings)
                limiter = make_in_flight_limiter(settings, redis_client, lease_s=settings.endpoint_in_flight_lease_s)
                client = EndpointClient(settings, limiter=limiter)
                engine = make_sync_engine(settings, system_scope=True)
                self._context = WorkerContext(
                    settings=settings,
                    engine=engine,
                    client=client,
                    batcher=RowBatcher(client, settings.endpoint_max_rows_per_request, settings.endpoint_batch_wait_s),
                    notifier=job_events(settings),
                    dispatch_round=make_dispatch_round(engine),
                    app=self._app,
                    wake_dispatcher=self._wake_dispatcher,
                    client_3d=make_client_3d(settings, limiter, redis_client),
                    # its processes start on the first decode that needs one
                    decoder=DecodePool.from_settings(settings, preload=(*DEFAULT_PRELOAD, "workers.decode_steps")),
                )
                self._pid = os.getpid()
            return self._context
