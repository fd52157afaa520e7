"""The embedded default (``make run``): one process tree, no servers to install.

SQLite under the data directory, the filesystem queue, one segmentation worker process, a small
webhook worker process (its own queue and threads, as in production), the built-in endpoint
emulator (unless MEDPARSE_ENDPOINT_SCORING_URI points at a real endpoint), and the gateway in this
process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
from aiohttp import web

from gateway.app import create_app
from gateway.http.serving import GatewayRunner
from medparse.settings import Settings
from runtime.cli import create_tenant
from runtime.migrate import upgrade


def write_sample_image(path: Path) -> None:
    """A CT-like 512x512 slice (body, two organs) so the curl line has something to segment."""
    img = np.zeros((512, 512), np.uint8)
    cv2.ellipse(img, (256, 256), (220, 170), 0, 0, 360, 90, -1)
    cv2.ellipse(img, (190, 240), (80, 60), 20, 0, 360, 170, -1)
    cv2.ellipse(img, (350, 290), (35, 45), 0, 0, 360, 200, -1)
    noise = np.random.default_rng(7).normal(0, 6, img.shape)
    img = np.clip(cv2.GaussianBlur(img, (0, 0), 2) + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)


def _wait_http(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up") from None
            time.sleep(0.1)


def _child(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "runtime.cli", *args], env=env)


async def run_embedded(settings: Settings) -> None:
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings)
    _, api_key = create_tenant(settings, "default", reuse=True)
    env = {**os.environ, "MEDPARSE_DATA_DIR": str(data_dir)}
    children: list[subprocess.Popen[bytes]] = []
    if settings.endpoint_scoring_uri is None:
        emulator_key = secrets.token_urlsafe(24)
        children.append(_child(["emulator", "--port", str(settings.emulator_port)],
                               {**env, "MEDPARSE_EMULATOR_KEY": emulator_key}))
        _wait_http(f"http://127.0.0.1:{settings.emulator_port}/", 30)
        env["MEDPARSE_ENDPOINT_SCORING_URI"] = f"http://127.0.0.1:{settings.emulator_port}/score"
        env["MEDPARSE_ENDPOINT_KEY"] = emulator_key
    children.append(_child(["worker"], env))
    # Webhooks in their own small pool: a slow receiver must not hold a segmentation thread here either.
    webhook_threads = str(min(2, settings.webhook_worker_concurrency))
    children.append(_child(["worker", "--role", "webhooks", "--concurrency", webhook_threads], env))
    sample = data_dir / "sample.png"
    write_sample_image(sample)

    # The production gateway's runner: the same header deadline, keep-alive and connection cap.
    runner = GatewayRunner(
        create_app(settings), settings, access_log=None, keepalive_timeout=settings.gateway_keepalive_timeout_s
    )
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    url = f"http://{settings.host}:{settings.port}"
    print(f"\nmedparse-gateway (embedded) listening on {url}")
    print(f"API key: {api_key}")
    print("Try:")
    print(
        f"  curl -s -H 'Authorization: Bearer {api_key}' -H 'Prefer: wait=30' "
        f"-F image=@{sample} -F 'prompts=liver & kidney' {url}/v1/jobs\n",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            if any(c.poll() is not None for c in children):
                print("a child process exited; shutting down", file=sys.stderr)
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        await runner.cleanup()
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
