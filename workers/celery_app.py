"""The workers' Celery app, built from Settings by ``make_celery`` (never at import time)."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals

from medparse.queue import celery_config
from medparse.settings import Settings
from workers.context import ContextHolder
from workers.dispatcher import Dispatcher
from workers.periodic import PeriodicThread
from workers.sweeper import sweep_once
from workers.tasks import register_tasks
from workers.webhook_tasks import register_webhooks

log = logging.getLogger(__name__)


def make_celery(settings: Settings, *, sweeper: bool = True) -> Celery:
    """``sweeper=False`` (tests): no background dispatcher or sweeper threads."""
    app = Celery("medparse-worker", set_as_current=True)
    app.conf.update(celery_config(settings))
    dispatcher: Dispatcher | None = None
    holder = ContextHolder(settings, app, wake_dispatcher=lambda: dispatcher.wake() if dispatcher else None)
    register_tasks(app, holder)
    register_webhooks(app, holder, settings, dispatcher=sweeper)
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
