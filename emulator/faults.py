"""Operational behaviour of a managed online endpoint: throttling, capacity, latency and injected faults.

Everything here is asyncio-friendly (no blocking sleeps) and reads its limits from the live config on
each call, so ``POST /_emulator/config`` takes effect for the next request.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

from aiohttp import web

#: Injected statuses answered at once, as the front end would; the rest come after the model's latency.
IMMEDIATE_FAULTS = frozenset({429, 503})

FAULT_MESSAGES = {
    408: "Request timed out (injected fault)",
    424: "Model container returned an error (injected fault)",
    429: "Rate-limited (injected fault)",
    500: "Internal server error (injected fault)",
    502: "Bad gateway (injected fault)",
    503: "Service unavailable (injected fault)",
    504: "Gateway timeout (injected fault)",
}


class RateLimiter:
    """Token bucket: ``rate`` requests per second on average, bursts of up to one second's worth."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens: float | None = None
        self._last = clock()

    def allow(self, rate: float) -> bool:
        if rate <= 0:
            return True
        now = self._clock()
        tokens = rate if self._tokens is None else self._tokens
        tokens = min(rate, tokens + (now - self._last) * rate)
        self._last = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True


class GpuSlots:
    """Requests being scored at once; the rest wait in arrival order, as in a deployment's queue.

    The capacity is read on every check, so it can change while requests wait.
    """

    def __init__(self) -> None:
        self._busy = 0
        self._changed = asyncio.Condition()

    @property
    def busy(self) -> int:
        return self._busy

    async def acquire(self, capacity: Callable[[], int]) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._busy < capacity())
            self._busy += 1

    async def release(self) -> None:
        async with self._changed:
            self._busy -= 1
            # notify_all, not notify: a waiter that was woken and then cancelled (its request timed
            # out) would otherwise swallow the wake-up and leave a free slot unused.
            self._changed.notify_all()

    async def capacity_changed(self) -> None:
        async with self._changed:
            self._changed.notify_all()


def draw_fault(rng: random.Random, fault_rates: dict[int, float]) -> int | None:
    """The injected status for this request, if the dice say so; one draw covers all fault kinds."""
    if not fault_rates:
        return None
    roll = rng.random()
    for status in sorted(fault_rates):
        roll -= fault_rates[status]
        if roll < 0:
            return status
    return None


def sample_latency_s(rng: random.Random, latency_ms: float, jitter_ms: float) -> float:
    """Simulated model time for one request: ``latency_ms`` +/- up to ``jitter_ms``, never negative."""
    jitter = rng.uniform(-jitter_ms, jitter_ms) if jitter_ms > 0 else 0.0
    return max(0.0, latency_ms + jitter) / 1000.0


#: What a trickling hang sends: a valid status line, then a header value that never ends.
_TRICKLE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-emulator-injected-fault: hang\r\nx-trickle: "


#: Counted in the stats for a hung request once its client gave up (nginx's "client closed request").
CLIENT_GAVE_UP = 499


async def hang(request: web.Request, mode: str, interval_s: float) -> web.Response:
    """Accept the request, then never finish the answer, until the client disconnects.

    ``trickle`` writes the response head one byte per ``interval_s`` straight to the transport (and
    then a header value that never ends), so a client's read timeout longer than ``interval_s`` never
    fires; ``silent`` writes nothing. The answer returned afterwards goes nowhere (the connection
    is gone); it only counts the request as 499 in the stats.
    """
    await request.read()
    transport = request.transport
    sent = 0
    while transport is not None and not transport.is_closing():
        if mode == "trickle":
            transport.write(_TRICKLE[sent:sent + 1] if sent < len(_TRICKLE) else b"a")
            sent += 1
        await asyncio.sleep(interval_s if mode == "trickle" else 0.1)
    return web.Response(status=CLIENT_GAVE_UP)
