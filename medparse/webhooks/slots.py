"""How many deliveries are being sent at once, per tenant and per target host.

A delivery takes a slot in both its tenant's and its host's set, atomically, without waiting: when
either is full it is not attempted and goes back to pending for a moment (workers/webhook_delivery.py),
so a tenant with many slow receivers, or a slow host shared by many tenants, never occupies more
than its share of the webhook workers' threads.

In Redis each set is a sorted set of holder tokens scored by lease expiry (Redis server time), as in
``medparse.endpoint.limiter``; that limiter's blocking wait and renewal thread do not fit here:
nothing waits (a thread waiting for a slot is the very thing to avoid), and a delivery attempt has a
hard deadline, so a lease of that deadline plus a margin never needs renewing. A crashed holder's
slot comes back when its lease ends.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from typing import Protocol

import redis

from medparse.settings import Settings

# KEYS: holder sets; ARGV[1] token, ARGV[2] lease_ms, ARGV[3..] the limit of each key. 1 = taken in all.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  if redis.call('ZCARD', KEYS[i]) >= tonumber(ARGV[i + 2]) then
    return 0
  end
end
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[i], 2 * tonumber(ARGV[2]))
end
return 1
"""

_RELEASE = """
for i = 1, #KEYS do
  redis.call('ZREM', KEYS[i], ARGV[1])
end
return 1
"""


@dataclass(frozen=True)
class SlotRequest:
    """The sets a delivery needs a place in: its tenant's and its target host's."""

    tenant: str
    host: str


@dataclass(frozen=True)
class HeldSlots:
    token: str
    keys: tuple[str, ...]


class DeliverySlots(Protocol):
    def try_acquire(self, request: SlotRequest) -> HeldSlots | None:
        """Places in both sets, or None at once when either is full."""
        ...

    def release(self, held: HeldSlots) -> None: ...


class RedisDeliverySlots:
    def __init__(
        self, redis_client: redis.Redis, namespace: str, *, per_tenant: int, per_host: int, lease_s: float
    ) -> None:
        self._prefix = f"{namespace}:webhooks:sending"
        self._limits = (per_tenant, per_host)
        self._lease_ms = max(1, int(lease_s * 1000))
        self._acquire = redis_client.register_script(_ACQUIRE)
        self._release = redis_client.register_script(_RELEASE)

    def _keys(self, request: SlotRequest) -> tuple[str, ...]:
        return f"{self._prefix}:tenant:{request.tenant}", f"{self._prefix}:host:{request.host}"

    def try_acquire(self, request: SlotRequest) -> HeldSlots | None:
        keys, token = self._keys(request), uuid.uuid4().hex
        if self._acquire(keys=list(keys), args=[token, self._lease_ms, *self._limits]):
            return HeldSlots(token, keys)
        return None

    def release(self, held: HeldSlots) -> None:
        self._release(keys=list(held.keys), args=[held.token])


class LocalDeliverySlots:
    """The embedded mode's: one webhook worker process, so counters under a lock are enough."""

    def __init__(self, *, per_tenant: int, per_host: int) -> None:
        self._limits = (per_tenant, per_host)
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}

    def try_acquire(self, request: SlotRequest) -> HeldSlots | None:
        keys = (f"tenant:{request.tenant}", f"host:{request.host}")
        with self._lock:
            if any(self._held.get(k, 0) >= limit for k, limit in zip(keys, self._limits, strict=True)):
                return None
            for k in keys:
                self._held[k] = self._held.get(k, 0) + 1
        return HeldSlots(uuid.uuid4().hex, keys)

    def release(self, held: HeldSlots) -> None:
        with self._lock:
            for k in held.keys:
                left = self._held.get(k, 0) - 1
                if left > 0:
                    self._held[k] = left
                else:
                    self._held.pop(k, None)


def make_delivery_slots(
    settings: Settings, redis_client: redis.Redis | None, *, lease_s: float
) -> DeliverySlots:
    if redis_client is None:
        return LocalDeliverySlots(
            per_tenant=settings.webhook_max_in_flight_per_tenant, per_host=settings.webhook_max_in_flight_per_host
        )
    return RedisDeliverySlots(
        redis_client, settings.redis_namespace, per_tenant=settings.webhook_max_in_flight_per_tenant,
        per_host=settings.webhook_max_in_flight_per_host, lease_s=lease_s,
    )


def host_of(url: str) -> str:
    """``host:port`` of a target URL, lower-cased, as the per-host key (the URL itself is not kept)."""
    from medparse.webhooks.ssrf import UnsafeTarget, parse_target

    try:
        target = parse_target(url)
    except UnsafeTarget:
        return "invalid"  # refused by the sender anyway; one shared key is fine
    return f"{target.host.lower()}:{target.port}"


__all__ = ["DeliverySlots", "HeldSlots", "LocalDeliverySlots", "RedisDeliverySlots", "SlotRequest",
           "host_of", "make_delivery_slots"]
