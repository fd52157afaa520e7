"""A global cap on requests in flight to the endpoint, shared by every worker thread and process.

The deployment answers 429 once more than ``2 * max_concurrent_requests_per_instance * instance_count``
requests are pending, and queues (and times out) before that, so all workers together keep at most
``endpoint_max_in_flight`` requests open. A slot is held for one HTTP attempt, never during backoff.

``RedisInFlightLimiter`` is a leased semaphore in Redis:
- ``key`` is a sorted set of holder tokens scored by lease expiry (Redis server time, so host clocks
  do not matter). A Lua script drops expired holders, then adds the token if fewer than ``limit``
  remain, atomically.
- Release removes the token and pushes one wake-up onto ``key:wake``; waiters block on it with
  BLPOP, so a freed slot goes to a waiter within about a millisecond. The BLPOP timeout
  (``max_block_s``) only bounds how late a waiter notices a crashed holder's expired lease.
- A crashed holder's slot comes back ``lease_s`` after its last renewal. Live holders never lose
  theirs: a background thread renews every held lease each ``lease_s / 3``, so a call may outlast
  ``lease_s`` and ``lease_s`` can stay short.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

import redis

from medparse.settings import Settings

log = logging.getLogger(__name__)

#: Default lease: how long a crashed process keeps a slot. Renewal makes it independent of call time.
DEFAULT_LEASE_S = 30.0

# KEYS[1] holders zset; ARGV token, limit, lease_ms. Returns 1 when the slot is taken.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[3]))
  return 1
end
return 0
"""

# KEYS[1] holders zset, KEYS[2] wake list; ARGV token, limit, lease_ms.
# The list never holds more wake-ups than slots: more could not all be useful, and stale ones
# only cost a waiter one extra acquire attempt.
_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('RPUSH', KEYS[2], '1')
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
redis.call('PEXPIRE', KEYS[2], 2 * tonumber(ARGV[3]))
return 1
"""

# KEYS[1] holders zset; ARGV lease_ms, tokens... Returns how many tokens were still held.
_RENEW = """
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', expiry, ARGV[i])
end
if renewed > 0 then
  redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[1]))
end
return renewed
"""


class InFlightSlotTimeout(TimeoutError):
    """No slot became free within the timeout given to ``slot``."""


class InFlightLimiter(Protocol):
    def slot(self, timeout: float | None = None) -> AbstractContextManager[None]:
        """Hold one in-flight slot for the ``with`` block; raise ``InFlightSlotTimeout`` after ``timeout``."""
        ...


def in_flight_limit(settings: Settings) -> int:
    return settings.endpoint_max_in_flight


class LocalInFlightLimiter:
    """The embedded mode's limiter: one process, so a semaphore is enough."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._sem = threading.BoundedSemaphore(limit)

    @contextmanager
    def slot(self, timeout: float | None = None) -> Iterator[None]:
        if not self._sem.acquire(timeout=timeout):
            raise InFlightSlotTimeout(f"no endpoint slot free within {timeout} s (limit {self.limit})")
        try:
            yield
        finally:
            self._sem.release()


class RedisInFlightLimiter:
    """A cross-process semaphore in Redis; see the module docstring for the protocol.

    The Redis client's ``socket_timeout`` (if set) must exceed ``max_block_s``.
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        key: str,
        limit: int,
        lease_s: float = DEFAULT_LEASE_S,
        *,
        max_block_s: float = 0.5,
        renew: bool = True,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if lease_s <= 0:
            raise ValueError("lease_s must be positive")
        self.limit = limit
        self.key = key
        self.wake_key = f"{key}:wake"
        self._redis = redis_client
        self._lease_ms = max(1, int(lease_s * 1000))
        self._max_block_s = max_block_s
        self._renew = renew
        self._acquire = redis_client.register_script(_ACQUIRE)
        self._release = redis_client.register_script(_RELEASE)
        self._renew_script = redis_client.register_script(_RENEW)
        self._held: set[str] = set()
        self._held_lock = threading.Lock()
        self._renewer: threading.Thread | None = None
        self._stop = threading.Event()

    @contextmanager
    def slot(self, timeout: float | None = None) -> Iterator[None]:
        token = self._take(timeout)
        try:
            yield
        finally:
            self._give_back(token)

    def holders(self) -> int:
        """Live holders right now (expired leases not counted), for metrics and tests."""
        now_ms = int(self._server_time() * 1000)
        return int(self._redis.zcount(self.key, now_ms + 1, "+inf"))

    def close(self) -> None:
        """Stop the renewal thread (held leases then expire after ``lease_s``)."""
        self._stop.set()
        renewer = self._renewer
        if renewer is not None:
            renewer.join()

    def _take(self, timeout: float | None) -> str:
        token = uuid.uuid4().hex
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._try_acquire(token):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise InFlightSlotTimeout(f"no endpoint slot free within {timeout} s (limit {self.limit})")
            block = self._max_block_s if left is None else min(self._max_block_s, left)
            # BLPOP takes a float timeout in seconds (0 would block forever).
            self._redis.blpop([self.wake_key], timeout=max(block, 0.001))
        self._track(token)
        return token

    def _try_acquire(self, token: str) -> bool:
        return bool(self._acquire(keys=[self.key], args=[token, self.limit, self._lease_ms]))

    def _give_back(self, token: str) -> None:
        with self._held_lock:
            self._held.discard(token)
        self._release(keys=[self.key, self.wake_key], args=[token, self.limit, self._lease_ms])

    def _track(self, token: str) -> None:
        with self._held_lock:
            self._held.add(token)
            if self._renew and self._renewer is None:
                self._stop.clear()
                self._renewer = threading.Thread(
                    target=self._renew_loop, name=f"in-flight-renew:{self.key}", daemon=True
                )
                self._renewer.start()

    def _renew_loop(self) -> None:
        interval = self._lease_ms / 3000
        while not self._stop.wait(interval):
            with self._held_lock:
                tokens = list(self._held)
                if not tokens:
                    # Nothing held: exit; the next acquire starts a new thread.
                    self._renewer = None
                    return
            try:
                renewed = int(self._renew_script(keys=[self.key], args=[self._lease_ms, *tokens]))
            except redis.RedisError:
                log.warning("could not renew %d in-flight leases on %s", len(tokens), self.key, exc_info=True)
                continue
            if renewed < len(tokens):
                # A pause longer than the lease (or a Redis restart) lost them; those calls finish
                # anyway, so the cap is briefly exceeded.
                lost = len(tokens) - renewed
                log.warning("%d in-flight leases on %s expired before renewal", lost, self.key)
        with self._held_lock:
            self._renewer = None

    def _server_time(self) -> float:
        seconds, micros = self._redis.time()
        return float(seconds) + micros / 1e6


def make_in_flight_limiter(
    settings: Settings, redis_client: redis.Redis | None = None, *, lease_s: float = DEFAULT_LEASE_S
) -> InFlightLimiter:
    """The Redis limiter under ``{redis_namespace}:endpoint:in_flight``, or a local one when embedded."""
    if redis_client is None:
        return LocalInFlightLimiter(in_flight_limit(settings))
    key = f"{settings.redis_namespace}:endpoint:in_flight"
    return RedisInFlightLimiter(redis_client, key, in_flight_limit(settings), lease_s)
