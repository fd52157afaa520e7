"""The workers' Celery app, built from Settings by ``make_celery`` (never at import time)."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals

from medparse.queue import celery_config
from medparse.settings import Settings
from workers.context import ContextHolder
from workers.sweeper import SweeperThread
from workers.tasks import register_tasks

log = logging.getLogger(__name__)


def make_celery(settings: Settings, *, sweeper: bool = True) -> Celery:
    app = Celery("medparse-worker", set_as_current=True)
    app.conf.update(celery_config(settings))
    holder = ContextHolder(settings, app)
    register_tasks(app, holder)
    if sweeper:
        thread = SweeperThread(holder.get, settings.sweep_interval_s)

        @signals.worker_ready.connect(weak=False)
        def _start_sweeper(**_: Any) -> None:
            thread.start()

        @signals.worker_shutdown.connect(weak=False)
        def _stop_sweeper(**_: Any) -> None:
            thread.stopped.set()

    return app
