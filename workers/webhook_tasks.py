"""``webhooks.deliver`` (a thin task) and the dispatcher that publishes due deliveries.

Retries wait in Postgres (``next_attempt_at``), never in the broker: a Celery countdown longer
than the Redis visibility timeout would be delivered twice, and a flushed Redis would lose it.
Every ``webhook_dispatch_interval_s`` each worker's dispatcher publishes the deliveries that are
due (and those whose sender died mid-attempt); the task's compare-and-set claim makes the
duplicates that several dispatchers or a redelivered message produce harmless.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery, signals
from kombu import Exchange, Queue

from db import webhooks as repo
from medparse.settings import Settings
from medparse.webhooks.sender import WebhookSender
from workers.context import ContextHolder, WorkerContext
from workers.periodic import PeriodicThread
from workers.webhook_delivery import deliver

log = logging.getLogger(__name__)

WEBHOOK_TASK = "webhooks.deliver"
#: Its own queue, so a backlog of segmentation jobs never delays a webhook.
WEBHOOK_QUEUE = "webhooks"
BATCH = 500


class SenderHolder:
    """One ``WebhookSender`` per process (built after fork, like the worker context)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._sender: WebhookSender | None = None

    def get(self) -> WebhookSender:
        with self._lock:
            if self._sender is None or self._pid != os.getpid():
                self._sender = WebhookSender(
                    timeout_s=self._settings.webhook_timeout_s,
                    allow_private=self._settings.webhook_allow_private_targets,
                )
                self._pid = os.getpid()
            return self._sender


def publish_due(ctx: WorkerContext, now: datetime | None = None) -> list[str]:
    """Publish ``webhooks.deliver`` for every due delivery not published recently; returns the ids."""
    now = now or datetime.now(UTC)
    before = now - timedelta(seconds=ctx.settings.redispatch_after_s)
    with ctx.engine.begin() as conn:
        due = list(conn.execute(repo.due_deliveries_stmt(now=now, dispatched_before=before, limit=BATCH)).scalars())
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


def register_webhooks(app: Celery, holder: ContextHolder, settings: Settings, *, dispatcher: bool = True) -> None:
    """The ``webhooks.deliver`` task, its queue (consumed by every worker) and the dispatcher thread."""
    queues = list(app.conf.task_queues or [Queue(app.conf.task_default_queue)])
    if all(q.name != WEBHOOK_QUEUE for q in queues):
        # Its own exchange: a queue without one is bound to the default exchange and routing key,
        # and would then also receive every segmentation message (and vice versa).
        queues.append(Queue(WEBHOOK_QUEUE, Exchange(WEBHOOK_QUEUE, type="direct"), routing_key=WEBHOOK_QUEUE))
    app.conf.task_queues = queues
    senders = SenderHolder(settings)

    @app.task(name=WEBHOOK_TASK, acks_late=True, ignore_result=True)
    def deliver_webhook(delivery_id: str) -> str:
        try:
            parsed = uuid.UUID(delivery_id)
        except ValueError:
            log.error("dropping webhook message with a malformed delivery id")
            return "malformed"
        ctx = holder.get()
        return deliver(ctx.engine, senders.get(), ctx.settings, parsed)

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
