"""A real webhook receiver (aiohttp on 127.0.0.1, own thread and loop) for webhook tests.

Every POST is recorded with its raw body and headers. Behaviour is chosen by path:

    /ok            200
    /flaky/<n>     500 for the first <n> calls to this path, then 200
    /gone          410
    /redirect      302 to /ok on the same receiver (a sender must not follow it)
    /slow/<s>      sleeps <s> seconds, then 200
    /throttle      429 with Retry-After: 1
    /status/<c>    answers with status <c>
    /trickle/<s>   sends its answer's head one byte every <s> seconds, never finishing, until the
                   sender hangs up (a per-read timeout longer than <s> never fires)

    with running_receiver() as receiver:
        url = receiver.url("/ok")
        receiver.wait_for("/ok", count=1)
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from aiohttp import web


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class Receiver:
    def __init__(self) -> None:
        self.base_url = ""
        self.received: list[Received] = []
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def requests(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.received if path is None or r.path == path]

    def wait_for(self, path: str, count: int = 1, timeout: float = 15.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.requests(path)
            if len(got) >= count:
                return got
            time.sleep(0.02)
        raise AssertionError(f"{path}: {len(self.requests(path))} requests after {timeout} s, wanted {count}")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        path = request.path
        with self._lock:
            self.received.append(Received(path, {k.lower(): v for k, v in request.headers.items()}, body, time.time()))
            self._counts[path] = self._counts.get(path, 0) + 1
            count = self._counts[path]
        parts = path.strip("/").split("/")
        kind = parts[0]
        if kind == "flaky":
            return web.Response(status=500 if count <= int(parts[1]) else 200)
        if kind == "gone":
            return web.Response(status=410)
        if kind == "redirect":
            return web.Response(status=302, headers={"Location": self.url("/ok")})
        if kind == "slow":
            await asyncio.sleep(float(parts[1]))
            return web.Response(status=200)
        if kind == "throttle":
            return web.Response(status=429, headers={"Retry-After": "1"})
        if kind == "status":
            return web.Response(status=int(parts[1]))
        if kind == "trickle":
            await _trickle(request, float(parts[1]))
            return web.Response(status=499)  # goes nowhere: the sender has hung up
        return web.Response(status=200, text="ok")


_TRICKLE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-trickle: "


async def _trickle(request: web.Request, interval_s: float) -> None:
    transport = request.transport
    sent = 0
    while transport is not None and not transport.is_closing():
        transport.write(_TRICKLE_HEAD[sent:sent + 1] if sent < len(_TRICKLE_HEAD) else b"a")
        sent += 1
        await asyncio.sleep(interval_s)


class _ServerThread(threading.Thread):
    def __init__(self, receiver: Receiver, ssl_context: ssl.SSLContext | None) -> None:
        super().__init__(name="webhook-receiver", daemon=True)
        self.receiver = receiver
        self._ssl = ssl_context
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None

    def run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self._ready.set()
        try:
            self.loop.run_forever()
        finally:
            if self._runner is not None:
                self.loop.run_until_complete(self._runner.cleanup())
            self.loop.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.receiver.handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._ssl)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.receiver.base_url = f"{'https' if self._ssl else 'http'}://{host}:{port}"

    def start_and_wait(self) -> None:
        self.start()
        if not self._ready.wait(10):
            raise RuntimeError("webhook receiver did not start")

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.join(10)


@contextmanager
def running_receiver(ssl_context: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    receiver = Receiver()
    thread = _ServerThread(receiver, ssl_context)
    thread.start_and_wait()
    try:
        yield receiver
    finally:
        thread.stop()
