"""Starting the real processes (emulator, worker, gateway) for end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from medparse.settings import Settings
from tests.support.ports import free_port


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes a child build the same Settings as ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDPARSE_")}
    env["MEDPARSE_DATA_DIR"] = str(settings.data_dir.resolve())
    env["MEDPARSE_REDIS_NAMESPACE"] = settings.redis_namespace
    # One gateway process unless a test asks for more: tests kill and watch a single pid.
    env["MEDPARSE_GATEWAY_PROCESSES"] = str(settings.gateway_processes or 1)
    if settings.database_url:
        env["MEDPARSE_DATABASE_URL"] = settings.database_url
    if settings.redis_url:
        env["MEDPARSE_REDIS_URL"] = settings.redis_url
    env.update(extra)
    return env


def wait_http(url: str, seconds: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} came up")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {seconds} s")


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "runtime.cli", *args], env=env, stdout=handle, stderr=subprocess.STDOUT
        )


def stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def emulator_process(tmp: Path, key: str, *extra: str) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDPARSE_")}
    env["MEDPARSE_EMULATOR_KEY"] = key
    proc = start(["emulator", "--port", str(port), *extra], env, tmp / "emulator.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/", proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


@contextmanager
def service_processes(
    settings: Settings, emulator_url: str, emulator_key: str, tmp: Path, *, concurrency: int = 2, **extra_env: str
) -> Iterator[str]:
    """A gateway, one segmentation worker and one webhook worker process for ``settings`` (plus
    ``extra_env`` settings); yields the gateway's base URL."""
    port = free_port()
    env = settings_env(settings, **{
        "MEDPARSE_PORT": str(port),
        "MEDPARSE_ENDPOINT_SCORING_URI": f"{emulator_url}/score",
        "MEDPARSE_ENDPOINT_KEY": emulator_key,
        "MEDPARSE_SWEEP_INTERVAL_S": "1",
        **extra_env,
    })
    gateway = start(["serve"], env, tmp / "gateway.log")
    worker = start(["worker", "--concurrency", str(concurrency)], env, tmp / "worker.log")
    # Webhooks are delivered by their own worker role (its own queue and threads).
    webhook_worker = start(["worker", "--role", "webhooks", "--concurrency", "2"], env, tmp / "webhook-worker.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=gateway)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(gateway)
        stop(worker)
        stop(webhook_worker)
