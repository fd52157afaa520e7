"""A daemon thread that runs one function every ``interval_s`` (the sweeper, the webhook dispatcher)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class PeriodicThread(threading.Thread):
    def __init__(self, name: str, interval_s: float, work: Callable[[], object]) -> None:
        super().__init__(name=name, daemon=True)
        self._interval_s = interval_s
        self._work = work
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self._interval_s):
            try:
                self._work()
            except Exception as exc:  # database or broker briefly away: try again next round
                log.warning("%s round failed: %s", self.name, type(exc).__name__)
