"""The compose healthcheck commands (medparse/healthcheck.py) against real processes: healthy when
the service answers, unhealthy when it does not."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from medparse.healthcheck import worker_answers
from medparse.settings import Settings
from tests.support.ports import free_port
from tests.support.processes import settings_env, start, stop, wait_http


def _healthcheck(settings: Settings, *args: str) -> int:
    return subprocess.run(
        [sys.executable, "-m", "medparse.healthcheck", *args], env=settings_env(settings), timeout=30,
    ).returncode


def test_http_healthcheck_of_a_gateway(pg_settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/healthz"
    assert _healthcheck(pg_settings, "http", url) == 1  # nothing listens yet
    gateway = start(["serve", "--processes", "1"], settings_env(pg_settings, MEDPARSE_PORT=str(port)),
                    tmp_path / "gateway.log")
    try:
        wait_http(url, proc=gateway)
        assert _healthcheck(pg_settings, "http", url) == 0
    finally:
        stop(gateway)


def test_worker_healthcheck_pings_the_worker_of_its_role(pg_settings: Settings, tmp_path: Path) -> None:
    worker = start(["worker", "--concurrency", "1"], settings_env(pg_settings), tmp_path / "worker.log")
    try:
        deadline = time.monotonic() + 30
        while not worker_answers(pg_settings, "segmentation", timeout_s=1.0):
            assert worker.poll() is None and time.monotonic() < deadline, "the worker never answered"
        assert _healthcheck(pg_settings, "worker", "segmentation") == 0
        assert not worker_answers(pg_settings, "webhooks", timeout_s=1.0)  # no worker of that role here
    finally:
        stop(worker)
    assert not worker_answers(pg_settings, "segmentation", timeout_s=1.0)
