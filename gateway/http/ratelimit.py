"""Per-tenant request rate limit: a token bucket (in Redis, shared by every gateway process), and a cap on
a tenant's requests in progress per gateway process (``ConcurrentRequests``).

Each tenant's bucket holds up to ``burst`` tokens and refills at ``rate`` per second; a request
takes one token or is refused with ``429`` and a ``Retry-After`` of the time until the next token.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway.http.problems import ApiProblem
from medparse.settings import Settings

# Server time (TIME) keeps buckets consistent across gateway hosts whose clocks differ.
TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local data = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(data[1])
local ts = tonumber(data[2])
if tokens == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) / 1000.0 * rate)
local allowed = 0
local retry_ms = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  retry_ms = math.min(86400000, math.ceil((1 - tokens) / rate * 1000))
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
-- A full bucket is the same as no bucket: keep it until it would be full again (at most a day).
redis.call('PEXPIRE', KEYS[1], math.min(86400000, math.ceil(burst / rate * 1000) + 1000))
return {allowed, retry_ms}
"""


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    retry_after_s: float


class RateLimiter:
    def __init__(self, settings: Settings) -> None:
        self._namespace = settings.redis_namespace
        self._redis = aioredis.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.gateway_redis_timeout_s,
            socket_connect_timeout=settings.gateway_redis_timeout_s,
        ) if settings.redis_url else None
        self._script = self._redis.register_script(TOKEN_BUCKET_LUA) if self._redis else None
        self._local: dict[uuid.UUID, tuple[float, float]] = {}

    async def take(self, tenant_id: uuid.UUID, rate: float, burst: float) -> RateDecision:
        if rate <= 0:
            return RateDecision(False, 60.0)
        if self._script is None:
            return self._take_local(tenant_id, rate, burst)
        key = f"{self._namespace}:ratelimit:{tenant_id}"
        allowed, retry_ms = await self._script(keys=[key], args=[rate, burst])
        return RateDecision(bool(allowed), int(retry_ms) / 1000.0)

    def _take_local(self, tenant_id: uuid.UUID, rate: float, burst: float) -> RateDecision:
        now = time.monotonic()
        tokens, last = self._local.get(tenant_id, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        if tokens >= 1:
            self._local[tenant_id] = (tokens - 1, now)
            return RateDecision(True, 0.0)
        self._local[tenant_id] = (tokens, now)
        return RateDecision(False, (1 - tokens) / rate)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


class ConcurrentRequests:
    """Requests of each tenant in their handlers in this gateway process, at most ``limit`` (0: no limit).

    One event loop per process: plain counters need no lock.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[uuid.UUID, int] = {}

    @contextmanager
    def hold(self, tenant_id: uuid.UUID) -> Iterator[None]:
        """Raises: ApiProblem: 429 when the tenant already has ``limit`` requests in progress here."""
        count = self._counts.get(tenant_id, 0)
        if self.limit and count >= self.limit:
            raise ApiProblem(
                429, "too_many_concurrent_requests",
                f"this tenant already has {count} requests in progress (limit {self.limit}); retry when some ended",
                headers={"Retry-After": "1"},
            )
        self._counts[tenant_id] = count + 1
        try:
            yield
        finally:
            left = self._counts[tenant_id] - 1
            if left:
                self._counts[tenant_id] = left
            else:
                del self._counts[tenant_id]
