"""Run the endpoint emulator on a loopback port in a background thread, for synchronous callers.

The emulator gets its own thread and event loop, so code under test may block (requests, httpx sync,
azure-identity credentials) or run its own loop without sharing one with the server.

    with running_emulator(EmulatorConfig(keys=["k"])) as base_url:
        httpx.post(f"{base_url}/score", ...)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

from emulator.app import create_emulator_app
from emulator.config import EmulatorConfig

STARTUP_TIMEOUT_S = 10.0


class _ServerThread(threading.Thread):
    def __init__(self, config: EmulatorConfig) -> None:
        super().__init__(name="emulator-server", daemon=True)
        self._config = config
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self.base_url = ""
        self.error: BaseException | None = None

    def run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start())
        except BaseException as exc:  # reported to the starting thread, which re-raises it
            self.error = exc
            self._ready.set()
            self._loop.close()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            if self._runner is not None:
                self._loop.run_until_complete(self._runner.cleanup())
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.run_until_complete(self._loop.shutdown_default_executor())
            self._loop.close()

    async def _start(self) -> None:
        self._runner = web.AppRunner(create_emulator_app(self._config), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"

    def wait_ready(self) -> None:
        if not self._ready.wait(STARTUP_TIMEOUT_S):
            raise TimeoutError("emulator did not start in time")
        if self.error is not None:
            raise RuntimeError("emulator failed to start") from self.error

    def stop(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._loop.stop)
        except RuntimeError:  # the loop already closed: start-up failed
            pass
        self.join(STARTUP_TIMEOUT_S)


@contextmanager
def running_emulator(config: EmulatorConfig) -> Iterator[str]:
    """Serve the emulator on ``127.0.0.1:<free port>``; yields its base URL (no trailing slash)."""
    server = _ServerThread(config)
    server.start()
    try:
        server.wait_ready()
        yield server.base_url
    finally:
        server.stop()
