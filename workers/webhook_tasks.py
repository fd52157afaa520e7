"""``webhooks.deliver`` (a thin task) and the dispatcher that publishes due deliveries.

Deliveries run in their own worker role (``medparse worker --role webhooks``: its own processes,
threads and queue), never in the segmentation pool, so receivers that are slow, trickling or down
cannot take a thread from any tenant's segmentation. That role also runs the dispatcher thread.

Retries wait in Postgres (``next_attempt_at``), never in the broker: a Celery countdown longer
than the Redis visibility timeout would be delivered twice, and a flushed Redis would lose it.
Every ``webhook_dispatch_interval_s`` each webhook worker's dispatcher publishes the deliveries that are
due (and those whose sender died mid-attempt); the task's compare-and-set claim makes the
duplicates that several dispatchers or a redelivered message produce harmless.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from celery import Celery, signals
from kombu import Exchange, Queue
from sqlalchemy import Engine

from db import webhooks as repo
from db.engine import make_sync_engine
from medparse.backends import shared_redis
from medparse.settings import Settings
from medparse.webhooks.sender import WebhookSender
from medparse.webhooks.slots import DeliverySlots, make_delivery_slots
from workers.periodic import PeriodicThread
from workers.webhook_delivery import deliver, lease_seconds

log = logging.getLogger(__name__)

WEBHOOK_TASK = "webhooks.deliver"
#: Its own queue, so a backlog of segmentation jobs never delays a webhook.
WEBHOOK_QUEUE = "webhooks"
BATCH = 500


class Publishing(Protocol):
    """What ``publish_due`` needs: a WebhookContext, or a segmentation WorkerContext in tests."""

    settings: Settings
    engine: Engine
    app: Celery


@dataclass
class WebhookContext:
    """A webhook worker's per-process resources: no endpoint client, no decode pool."""

    settings: Settings
    engine: Engine
    app: Celery
    sender: WebhookSender
    slots: DeliverySlots


def make_sender(settings: Settings) -> WebhookSender:
    return WebhookSender(
        timeout_s=settings.webhook_timeout_s,
        allow_private=settings.webhook_allow_private_targets,
        attempt_deadline_s=settings.webhook_attempt_deadline_s,
    )


class WebhookContextHolder:
    """Built lazily, once per process id (after fork, like the worker context)."""

    def __init__(self, settings: Settings, app: Celery) -> None:
        self._settings = settings
        self._app = app
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._context: WebhookContext | None = None

    def get(self) -> WebhookContext:
        with self._lock:
            if self._context is None or self._pid != os.getpid():
                settings = self._settings
                redis_client = shared_redis(settings)
                self._context = WebhookContext(
                    settings=settings,
                    engine=make_sync_engine(settings, system_scope=True),
                    app=self._app,
                    sender=make_sender(settings),
                    slots=make_delivery_slots(settings, redis_client, lease_s=lease_seconds(settings)),
                )
                self._pid = os.getpid()
            return self._context


def publish_due(ctx: Publishing, now: datetime | None = None) -> list[str]:
    """Publish ``webhooks.deliver`` for every due delivery not published recently; returns the ids."""
    now = now or datetime.now(UTC)
    before = now - timedelta(seconds=ctx.settings.redispatch_after_s)
    with ctx.engine.begin() as conn:
        # Twice the tenant's sending slots per pass: enough to keep its slots busy, while the rest of
        # a backlog waits in Postgres instead of being published only to be postponed.
        per_tenant = 2 * ctx.settings.webhook_max_in_flight_per_tenant
        due = list(conn.execute(
            repo.due_deliveries_stmt(now=now, dispatched_before=before, limit=BATCH, per_tenant=per_tenant)
        ).scalars())
        if not due:
            return []
        # Another worker's dispatcher may take some meanwhile: only those marked here are ours.
        taken = set(conn.execute(repo.mark_dispatched_stmt(due, now=now, dispatched_before=before)).scalars())
    ours = [delivery_id for delivery_id in due if delivery_id in taken]
    published: list[str] = []
    for i, delivery_id in enumerate(ours):
        try:
            ctx.app.send_task(WEBHOOK_TASK, args=[str(delivery_id)], queue=WEBHOOK_QUEUE)
        except Exception:  # broker down: the rest go back to the next pass, as if never taken
            with ctx.engine.begin() as conn:
                conn.execute(repo.unmark_dispatched_stmt(ours[i:], now=now))
            raise
        published.append(str(delivery_id))
    return published


def declare_webhook_queue(app: Celery) -> None:
    """The ``webhooks`` queue beside the default one. Only the webhook role consumes it (``-Q``)."""
    queues = list(app.conf.task_queues or [Queue(app.conf.task_default_queue)])
    if all(q.name != WEBHOOK_QUEUE for q in queues):
        # Its own exchange: a queue without one is bound to the default exchange and routing key,
        # and would then also receive every segmentation message (and vice versa).
        queues.append(Queue(WEBHOOK_QUEUE, Exchange(WEBHOOK_QUEUE, type="direct"), routing_key=WEBHOOK_QUEUE))
    app.conf.task_queues = queues


def register_webhooks(app: Celery, settings: Settings, *, dispatcher: bool = True) -> WebhookContextHolder:
    """The webhook role: the ``webhooks.deliver`` task, its queue and the dispatcher thread."""
    declare_webhook_queue(app)
    holder = WebhookContextHolder(settings, app)

    @app.task(name=WEBHOOK_TASK, acks_late=True, ignore_result=True)
    def deliver_webhook(delivery_id: str) -> str:
        try:
            parsed = uuid.UUID(delivery_id)
        except ValueError:
            log.error("dropping webhook message with a malformed delivery id")
            return "malformed"
        ctx = holder.get()
        return deliver(ctx.engine, ctx.sender, ctx.settings, parsed, ctx.slots)

    if dispatcher:
        thread = PeriodicThread(
            "webhook-dispatcher", settings.webhook_dispatch_interval_s, lambda: publish_due(holder.get())
        )

        @signals.worker_ready.connect(weak=False)
        def _start_dispatcher(**_: Any) -> None:
            thread.start()

        @signals.worker_shutdown.connect(weak=False)
        def _stop_dispatcher(**_: Any) -> None:
            thread.stopped.set()

    return holder
