"""The workers' Celery apps, built from Settings (never at import time), one per worker role.

- ``segmentation`` (``make_celery``): ``segmentation.run``, the fair dispatcher and the sweeper;
  it consumes only the ``segmentation`` queue.
- ``webhooks`` (``make_webhook_celery``): ``webhooks.deliver`` and the webhook dispatcher; it
  consumes only the ``webhooks`` queue, with its own processes and threads, so a slow receiver
  can never take a segmentation thread.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals

from medparse.backends import job_queue
from medparse.queue import SEGMENT_QUEUE, celery_config
from medparse.settings import Settings
from workers.context import ContextHolder
from workers.dispatcher import Dispatcher
from workers.periodic import PeriodicThread
from workers.sweeper import sweep_once
from workers.tasks import register_tasks
from workers.webhook_tasks import WEBHOOK_QUEUE, declare_webhook_queue, register_webhooks

log = logging.getLogger(__name__)

#: worker role -> the one queue it consumes
ROLE_QUEUES = {"segmentation": SEGMENT_QUEUE, "webhooks": WEBHOOK_QUEUE}


def make_celery(settings: Settings, *, sweeper: bool = True) -> Celery:
    """The segmentation role. ``sweeper=False`` (tests): no background dispatcher or sweeper threads."""
    app = Celery("medparse-worker", set_as_current=True)
    app.conf.update(celery_config(settings, job_queue(settings)))
    declare_webhook_queue(app)  # declared, never consumed here: the webhook role's
    dispatcher: Dispatcher | None = None
    holder = ContextHolder(settings, app, wake_dispatcher=lambda: dispatcher.wake() if dispatcher else None)
    register_tasks(app, holder)
    if sweeper:
        dispatcher = Dispatcher(holder.get)
        thread = PeriodicThread("sweeper", settings.sweep_interval_s, lambda: sweep_once(holder.get()))

        @signals.worker_ready.connect(weak=False)
        def _start_background(**_: Any) -> None:
            dispatcher.start()
            thread.start()

        @signals.worker_shutdown.connect(weak=False)
        def _stop_background(**_: Any) -> None:
            dispatcher.stop()
            thread.stopped.set()

    return app


def make_webhook_celery(settings: Settings, *, dispatcher: bool = True) -> Celery:
    """The webhook role. ``dispatcher=False`` (tests): no webhook dispatcher thread."""
    app = Celery("medparse-webhooks", set_as_current=True)
    app.conf.update(celery_config(settings, job_queue(settings)))
    register_webhooks(app, settings, dispatcher=dispatcher)
    return app
