"""``medparse serve --processes 2`` replaces a gateway process that died (runtime/supervisor.py),
and still shuts down cleanly; real processes against a throwaway Postgres and Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from medparse.settings import Settings
from tests.support.ports import free_port
from tests.support.processes import settings_env, start, stop, wait_http
from tests.support.stack import HealthWatch, children_of, is_alive

BACKOFF_MIN_S = 0.3


@dataclass
class Serve:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def children(self) -> list[int]:
        return children_of(self.proc.pid)


@pytest.fixture
def serve(pg_settings: Settings, tmp_path: Path) -> Iterator[Serve]:
    port = free_port()
    env = settings_env(pg_settings, **{
        "MEDPARSE_PORT": str(port),
        "MEDPARSE_GATEWAY_RESTART_BACKOFF_MIN_S": str(BACKOFF_MIN_S),
        "MEDPARSE_GATEWAY_RESTART_BACKOFF_MAX_S": "5",
        "MEDPARSE_GATEWAY_RESTART_RESET_AFTER_S": "30",
    })
    proc = start(["serve", "--processes", "2"], env, tmp_path / "gateway.log")
    serve = Serve(proc, f"http://127.0.0.1:{port}", tmp_path / "gateway.log")
    try:
        wait_http(f"{serve.url}/healthz", proc=proc)
        _wait_for(lambda: len(serve.children()) == 2, 20, "two gateway processes")
        yield serve
    finally:
        stop(proc)


def _wait_for(condition: Callable[[], bool], seconds: float, what: str) -> float:
    began = time.monotonic()
    while not condition():
        assert time.monotonic() - began < seconds, f"no {what} after {seconds} s"
        time.sleep(0.02)
    return time.monotonic() - began


def _kill_and_wait_for_a_new_one(serve: Serve, victim: int, seen: set[int]) -> tuple[int, float]:
    """SIGKILL ``victim``; the pid of the process that replaced it and how long that took."""
    os.kill(victim, signal.SIGKILL)
    took = _wait_for(lambda: bool(set(serve.children()) - seen), 15, "replacement gateway process")
    (new,) = set(serve.children()) - seen
    seen.add(new)
    return new, took


def test_a_killed_gateway_process_is_replaced_with_backoff_while_healthz_answers(serve: Serve) -> None:
    first, second = serve.children()
    seen = {first, second}
    # A probe may fail at the instant of a kill (what the killed process held or had queued on its
    # SO_REUSEPORT socket dies with it); none may fail or be slow after it.
    with HealthWatch(serve.url) as at_kill:
        replacement, took = _kill_and_wait_for_a_new_one(serve, first, seen)
    assert BACKOFF_MIN_S - 0.05 <= took < BACKOFF_MIN_S + 2.0, took  # not before the backoff, soon after
    with HealthWatch(serve.url) as watch:
        time.sleep(1.0)  # it is up and serving (a young process that dies counts as dying in a row)
    watch.assert_healthy(limit_s=1.0)
    with HealthWatch(serve.url) as at_second_kill:
        # the same slot dies again soon: the delay doubles
        _, took_again = _kill_and_wait_for_a_new_one(serve, replacement, seen)
    assert took_again >= 2 * BACKOFF_MIN_S - 0.05, took_again
    with HealthWatch(serve.url) as watch:
        time.sleep(1.0)
    watch.assert_healthy(limit_s=1.0)
    for probes in (at_kill, at_second_kill):
        # only connections the kill cut (refused or reset), never a slow or a 5xx answer
        assert probes.max_latency_s < 1.0 and len(probes.failures) <= 5, probes.failures
        assert all(f.endswith("Error") for f in probes.failures), probes.failures
    assert second in serve.children()
    log = serve.log.read_text()
    assert f"gateway process {first} in slot 0 exited unasked (killed by SIGKILL)" in log
    assert f"replacing it in {BACKOFF_MIN_S:.1f} s" in log
    assert f"replacing it in {2 * BACKOFF_MIN_S:.1f} s" in log
    assert "restart 2 since start-up" in log

    # SIGTERM still stops everything, promptly and cleanly
    children = serve.children()
    serve.proc.send_signal(signal.SIGTERM)
    assert serve.proc.wait(timeout=15) == 0
    assert not [pid for pid in children if is_alive(pid)]
    assert "Traceback" not in serve.log.read_text()


def test_gateway_processes_die_with_a_killed_parent(serve: Serve) -> None:
    children = serve.children()
    serve.proc.kill()
    serve.proc.wait(timeout=5)
    _wait_for(lambda: not [pid for pid in children if is_alive(pid)], 10, "exit of the orphaned children")
