"""Celery configuration of the workers (which also publish: the fair dispatcher and webhooks).

The broker is a delivery hint, never the record: Postgres holds every job, and the sweeper hands
jobs the broker lost back to the dispatcher. Messages carry the job id only.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

import redis.asyncio as aioredis
from kombu.transport import filesystem, virtual
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

from medparse.settings import Settings

SEGMENT_TASK = "segmentation.run"
SEGMENT_QUEUE = "segmentation"


class _AtomicFilesystemChannel(filesystem.Channel):
    # kombu names the argument "payload" here but "message" on its base class; callers pass it by keyword.
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """As kombu's, but a message appears under its final name only once it is complete.

        kombu's reader moves a message file away as soon as it lists it, without the writer's lock,
        so it can read a file that is still empty; the worker then dies on a JSON error (kombu
        issue #1551). Here the file is written under a name the reader skips, then renamed.
        """
        name = f"{int(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        partial = os.path.join(self.data_folder_out, f"partial-{uuid.uuid4().hex}")
        with open(partial, "wb") as f:
            f.write(str_to_bytes(dumps(payload)))
        os.replace(partial, os.path.join(self.data_folder_out, name))


#: The declared exchanges and bindings, one per control folder (see ``AtomicFilesystemTransport``).
_BROKER_STATES: dict[Path, virtual.BrokerState] = {}


class AtomicFilesystemTransport(filesystem.Transport):
    """kombu's filesystem transport (the embedded default's queue) with atomic message writes.

    kombu keeps one record of what was declared for every filesystem transport in the process and
    skips declaring a binding again, yet the bindings live in the control folder: a second queue
    folder in the same process (tests; two instances) would never get its binding written, and its
    messages would be dropped. So the record is kept per control folder.
    """

    Channel = _AtomicFilesystemChannel

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        control = Path(client.transport_options.get("control_folder", "control")).resolve()
        self.state = _BROKER_STATES.setdefault(control, virtual.BrokerState())


def embedded_queue_dir(settings: Settings) -> Path:
    return (settings.data_dir / "queue").resolve()


class JobQueue(Protocol):
    """Where dispatched job ids wait for a worker: the Celery broker's transport.

    Celery publishes and consumes the same way over either; what differs is the transport's
    configuration and how readiness is checked. Chosen once at start-up (medparse/backends.py).
    """

    def broker_options(self) -> dict[str, Any]:
        """The Celery settings naming the broker and its transport options."""
        ...

    async def check(self) -> str:
        """``ok``, or ``unavailable: <reason>`` (the gateway's readiness)."""
        ...

    async def close(self) -> None: ...


class RedisJobQueue:
    """Production: Celery over Redis, under the instance's key prefix."""

    def __init__(self, settings: Settings, redis_url: str) -> None:
        self._settings = settings
        self._url = redis_url
        self._client: aioredis.Redis | None = None

    def broker_options(self) -> dict[str, Any]:
        transport_options = {
            # Must exceed the longest task, or Redis hands the same message to a second worker.
            "visibility_timeout": self._settings.broker_visibility_timeout_s,
            "global_keyprefix": f"{self._settings.redis_namespace}:",
        }
        return {"broker_url": self._url, "broker_transport_options": transport_options}

    async def check(self) -> str:
        if self._client is None:
            self._client = aioredis.Redis.from_url(self._url)
        try:
            await asyncio.wait_for(self._client.ping(), timeout=2)
            return "ok"
        except Exception as exc:  # any failure means not ready
            return f"unavailable: {type(exc).__name__}"

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


class FolderJobQueue:
    """The embedded default: Celery over kombu's filesystem transport in the data directory."""

    def __init__(self, settings: Settings) -> None:
        self._dir = embedded_queue_dir(settings)

    def broker_options(self) -> dict[str, Any]:
        queue_dir = self._dir
        (queue_dir / "processed").mkdir(parents=True, exist_ok=True)
        (queue_dir / "control").mkdir(parents=True, exist_ok=True)
        return {
            "broker_url": None,
            "broker_transport": f"{__name__}:AtomicFilesystemTransport",
            "broker_transport_options": {
                "data_folder_in": str(queue_dir),
                "data_folder_out": str(queue_dir),
                "processed_folder": str(queue_dir / "processed"),
                # kombu keeps its exchange-to-queue table in ./control by default, shared by every
                # embedded instance started in the same directory: keep it with this instance's queue.
                "control_folder": str(queue_dir / "control"),
                "store_processed": False,
                # The filesystem transport polls; 50 ms keeps the embedded queue hop short.
                "polling_interval": 0.05,
            },
        }

    async def check(self) -> str:
        return "ok" if self._dir.is_dir() else "unavailable: queue folder missing"

    async def close(self) -> None:
        return None


def celery_config(settings: Settings, queue: JobQueue) -> dict[str, Any]:
    return {
        "task_default_queue": SEGMENT_QUEUE,
        "task_serializer": "json",
        "accept_content": ["json"],
        # Postgres is the only truth about a job; Celery's result backend is never consulted.
        "task_ignore_result": True,
        "result_backend": None,
        # Acknowledge after the task returns, and requeue when the worker process dies, so a
        # kill -9 mid-call re-runs the job (the compare-and-set claim makes a re-run harmless).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_soft_time_limit": settings.task_soft_time_limit_s,
        "task_time_limit": settings.task_time_limit_s,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        **queue.broker_options(),
    }
