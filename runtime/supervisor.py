"""The ``medparse serve`` parent: starts the gateway processes and replaces one that dies.

A gateway process can die without being asked (the OOM killer, a crash in a C extension). Its
siblings keep the port (SO_REUSEPORT), but the capacity would be gone for good, so the parent
starts another in its slot. The delay before that doubles with each death of the slot in a row
(from ``backoff_min_s`` to ``backoff_max_s``), so a process that dies at start-up (a port taken,
a bad setting) does not spin; one that stayed up ``reset_after_s`` counts as healthy again.

SIGTERM or SIGINT stops the children (each finishes its requests) and then the parent. Each child
also gets SIGTERM when the parent dies, even by SIGKILL, so none is left answering on the port.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType

log = logging.getLogger(__name__)


@dataclass
class Backoff:
    """Delay before restarting one slot: doubles per death in a row, starts over after a long life."""

    min_s: float
    max_s: float
    reset_after_s: float
    _next_s: float = field(init=False)

    def __post_init__(self) -> None:
        self._next_s = self.min_s

    def after_exit(self, uptime_s: float) -> float:
        if uptime_s >= self.reset_after_s:
            self._next_s = self.min_s
        delay = min(self._next_s, self.max_s)
        self._next_s = min(self._next_s * 2, self.max_s)
        return delay


@dataclass
class _Slot:
    index: int
    backoff: Backoff
    process: BaseProcess | None = None
    started_at: float = 0.0
    #: monotonic time of the pending restart (while ``process`` is None)
    restart_at: float = 0.0


class Supervisor:
    """Runs ``processes`` copies of ``target`` in child processes until SIGTERM/SIGINT."""

    def __init__(
        self,
        target: Callable[[], None],
        processes: int,
        *,
        backoff_min_s: float,
        backoff_max_s: float,
        reset_after_s: float,
        stop_timeout_s: float,
    ) -> None:
        self._target = target
        self._stop_timeout_s = stop_timeout_s
        self._slots = [
            _Slot(i, Backoff(backoff_min_s, backoff_max_s, reset_after_s)) for i in range(processes)
        ]
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        #: children started in place of one that died, since start-up
        self.restarts = 0

    @property
    def pids(self) -> list[int]:
        return [s.process.pid for s in self._slots if s.process is not None and s.process.pid is not None]

    def run(self) -> None:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for slot in self._slots:
                self._start(slot)
            while not self._stopping:
                self._watch_once()
        finally:
            self._stop_children()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only a flag and a byte: the main loop, woken by the byte, does the work.
        self._stopping = True
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:  # the pipe is full of earlier wake-ups: awake anyway
            pass

    def _watch_once(self) -> None:
        now = time.monotonic()
        running = {s.process.sentinel: s for s in self._slots if s.process is not None}
        due = [s.restart_at for s in self._slots if s.process is None]
        timeout = max(0.0, min(due) - now) if due else None
        ready = wait([self._wake_r, *running], timeout)
        if self._wake_r in ready:
            os.read(self._wake_r, 512)
        if self._stopping:
            return
        for sentinel in ready:
            if sentinel in running:
                self._reap(running[sentinel])
        now = time.monotonic()
        for slot in self._slots:
            if slot.process is None and slot.restart_at <= now:
                self.restarts += 1
                self._start(slot)
                log.info("gateway process %d started in slot %d (restart %d since start-up)",
                         slot.process.pid if slot.process else -1, slot.index, self.restarts)

    def _reap(self, slot: _Slot) -> None:
        process = slot.process
        assert process is not None
        process.join()
        uptime = time.monotonic() - slot.started_at
        delay = slot.backoff.after_exit(uptime)
        slot.process = None
        slot.restart_at = time.monotonic() + delay
        log.warning(
            "gateway process %s in slot %d exited unasked (%s) after %.1f s; replacing it in %.1f s "
            "(%d restarts so far)",
            process.pid, slot.index, _describe_exit(process.exitcode), uptime, delay, self.restarts,
        )
        process.close()

    def _start(self, slot: _Slot) -> None:
        process = multiprocessing.Process(
            target=_child_main, args=(self._target, os.getpid()), name=f"medparse-gateway-{slot.index}"
        )
        process.start()
        slot.process = process
        slot.started_at = time.monotonic()

    def _stop_children(self) -> None:
        live = [s.process for s in self._slots if s.process is not None]
        for process in live:
            if process.is_alive():
                process.terminate()  # each child shuts its aiohttp app down gracefully on SIGTERM
        deadline = time.monotonic() + self._stop_timeout_s
        for process in live:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("gateway process %s did not stop in %.0f s; killing it", process.pid,
                            self._stop_timeout_s)
                process.kill()
                process.join()
        for slot in self._slots:
            slot.process = None


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def _child_main(target: Callable[[], None], parent_pid: int) -> None:
    # The fork copied the parent's handlers; until the child's event loop installs its own, a
    # signal must act on this process alone (the parent's handler would wake a copied pipe).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    die_with_parent(parent_pid)
    target()


def die_with_parent(parent_pid: int) -> None:
    """This process gets SIGTERM when its parent dies, even by SIGKILL (Linux only): a killed
    gateway must not leave processes behind that still answer on its port."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before the prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
