from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from medparse.endpoint.limiter import (
    InFlightLimiter,
    InFlightSlotTimeout,
    LocalInFlightLimiter,
    RedisInFlightLimiter,
    in_flight_limit,
    make_in_flight_limiter,
)
from medparse.settings import Settings
from tests.support.throwaway import REDIS_URL


@pytest.fixture
def redis_client(redis_namespace: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def new_limiter(redis_namespace: str) -> Iterator[Callable[..., RedisInFlightLimiter]]:
    """Limiters on one private key, each with its own Redis connection pool (like separate processes)."""
    made: list[tuple[RedisInFlightLimiter, redis.Redis]] = []

    def make(limit: int, lease_s: float = 5.0, **kwargs: Any) -> RedisInFlightLimiter:
        client = redis.Redis.from_url(REDIS_URL)
        limiter = RedisInFlightLimiter(client, f"{redis_namespace}:in_flight", limit, lease_s, **kwargs)
        made.append((limiter, client))
        return limiter

    yield make
    for limiter, client in made:
        limiter.close()
        client.close()


class Gauge:
    """Counts holders inside the slot and remembers the most seen at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.current = 0
        self.peak = 0
        self.entries = 0

    def __enter__(self) -> None:
        with self._lock:
            self.current += 1
            self.entries += 1
            self.peak = max(self.peak, self.current)

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.current -= 1


def contend(limiters: list[InFlightLimiter], threads: int, rounds: int, hold_s: float) -> Gauge:
    gauge = Gauge()
    errors: list[BaseException] = []

    def work(limiter: InFlightLimiter) -> None:
        try:
            for _ in range(rounds):
                with limiter.slot(timeout=30), gauge:
                    time.sleep(hold_s)
        except BaseException as exc:  # surfaced below; a thread must not swallow it
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(limiters[i % len(limiters)],)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors
    return gauge


def test_threads_of_several_processes_never_exceed_the_limit(
    new_limiter: Callable[..., RedisInFlightLimiter],
) -> None:
    limiters: list[InFlightLimiter] = [new_limiter(3), new_limiter(3)]

    gauge = contend(limiters, threads=12, rounds=5, hold_s=0.01)

    assert gauge.entries == 60
    assert gauge.peak == 3


def test_all_slots_are_returned_after_use(
    new_limiter: Callable[..., RedisInFlightLimiter], redis_client: redis.Redis
) -> None:
    limiter = new_limiter(2)

    contend([limiter], threads=4, rounds=3, hold_s=0.0)

    assert limiter.holders() == 0
    assert redis_client.zcard(limiter.key) == 0
    assert redis_client.llen(limiter.wake_key) <= limiter.limit


def test_a_released_slot_wakes_a_waiter_within_milliseconds(
    new_limiter: Callable[..., RedisInFlightLimiter],
) -> None:
    # The waiter's BLPOP fallback is 5 s, so only the wake-up can explain a fast hand-over.
    holder, waiter = new_limiter(1), new_limiter(1, max_block_s=5.0)
    latencies = []
    for _ in range(5):
        acquired_at: list[float] = []
        with holder.slot():
            t = threading.Thread(target=_take_and_note, args=(waiter, acquired_at))
            t.start()
            time.sleep(0.1)  # let the waiter find the slot taken and block
            assert not acquired_at
            released_at = time.perf_counter()
        t.join()
        latencies.append(acquired_at[0] - released_at)

    print(f"wake-up latencies (ms): {[round(x * 1000, 2) for x in latencies]}")
    assert statistics.median(latencies) < 0.05
    assert max(latencies) < 0.5


def _take_and_note(limiter: InFlightLimiter, acquired_at: list[float]) -> None:
    with limiter.slot(timeout=10):
        acquired_at.append(time.perf_counter())


def test_a_crashed_holders_slot_comes_back_after_its_lease(
    new_limiter: Callable[..., RedisInFlightLimiter],
) -> None:
    crashed = new_limiter(1, lease_s=0.4, renew=False)
    survivor = new_limiter(1, lease_s=0.4, max_block_s=0.05)
    held = crashed.slot()  # kept referenced: collecting the generator would run its release
    held.__enter__()  # entered, never exited: the process "died" holding it
    started = time.monotonic()

    with survivor.slot(timeout=5):
        waited = time.monotonic() - started

    assert 0.3 <= waited < 1.5
    del held


def test_a_live_holder_keeps_its_slot_past_the_lease_by_renewing(
    new_limiter: Callable[..., RedisInFlightLimiter],
) -> None:
    long_call, other = new_limiter(1, lease_s=0.3), new_limiter(1, lease_s=0.3)

    with long_call.slot():
        time.sleep(0.7)  # more than two leases
        with pytest.raises(InFlightSlotTimeout):
            with other.slot(timeout=0.4):
                pass
        assert long_call.holders() == 1


def test_slot_gives_up_after_the_timeout(new_limiter: Callable[..., RedisInFlightLimiter]) -> None:
    limiter = new_limiter(1)
    with limiter.slot():
        started = time.monotonic()
        with pytest.raises(InFlightSlotTimeout):
            with limiter.slot(timeout=0.2):
                pass
        assert 0.15 <= time.monotonic() - started < 1.0


def test_the_local_limiter_caps_threads_and_times_out() -> None:
    limiter = LocalInFlightLimiter(2)

    gauge = contend([limiter], threads=6, rounds=4, hold_s=0.005)

    assert gauge.peak == 2
    with limiter.slot(), limiter.slot():
        with pytest.raises(InFlightSlotTimeout):
            with limiter.slot(timeout=0.05):
                pass


def test_the_factory_picks_redis_when_a_client_is_given(
    redis_client: redis.Redis, redis_namespace: str
) -> None:
    settings = Settings(
        redis_namespace=redis_namespace, endpoint_max_concurrent_per_instance=4, endpoint_instance_count=2
    )

    shared = make_in_flight_limiter(settings, redis_client)
    local = make_in_flight_limiter(settings)

    # 4 x 2 = 8 of capacity, plus the default 25 % headroom: the deployment queues, never 429s.
    assert in_flight_limit(settings) == 10
    assert isinstance(shared, RedisInFlightLimiter) and shared.limit == 10
    assert shared.key.startswith(f"{redis_namespace}:")
    assert isinstance(local, LocalInFlightLimiter) and local.limit == 10
    shared.close()
