"""The decode pool (medparse/decode_pool.py) against real child processes: memory and time limits,
crashes, the caps on concurrent decodes and bytes, and a parent that stays small."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from medparse.decode_pool import DecodeBusy, DecodeLimitExceeded, DecodeLimits, DecodePool
from medparse.imaging import ImageRejected
from tests.support import decode_calls as calls

MiB = 1024 * 1024


def limits(**changes: object) -> DecodeLimits:
    base = {
        "processes": 2, "memory_limit_bytes": 256 * MiB, "timeout_s": 10.0, "max_inflight_bytes": 64 * MiB,
        "max_waiting": 8, "queue_wait_s": 5.0,
    }
    return DecodeLimits(**{**base, **changes})  # type: ignore[arg-type]


@pytest.fixture
def pool() -> Iterator[DecodePool]:
    decode_pool = DecodePool(limits())
    yield decode_pool
    decode_pool.close()


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_runs_in_another_process_with_one_thread(pool: DecodePool) -> None:
    import os

    assert pool.call(calls.pid) != os.getpid()
    assert pool.call(calls.thread_limits) == {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def test_over_the_memory_limit_is_image_too_complex_and_the_pool_goes_on(pool: DecodePool) -> None:
    assert pool.call(calls.allocate, 64 * MiB) == 64 * MiB  # within the budget
    with pytest.raises(DecodeLimitExceeded) as caught:
        pool.call(calls.allocate, 512 * MiB)
    assert caught.value.code == "image_too_complex"
    assert caught.value.limit == "decode_memory_limit_bytes"
    assert isinstance(caught.value, ImageRejected)
    assert pool.call(calls.echo, "next") == "next"


def test_a_call_past_its_deadline_is_killed_in_time_and_replaced() -> None:
    pool = DecodePool(limits(processes=1, timeout_s=1.0))
    try:
        first = pool.call(calls.pid)
        started = time.monotonic()
        with pytest.raises(DecodeLimitExceeded) as caught:
            pool.call(calls.sleep, 30)
        elapsed = time.monotonic() - started
        assert caught.value.limit == "decode_timeout_s"
        assert elapsed < 1.0 + 0.5, elapsed
        assert pool.pids() == []  # the sleeping child was killed
        assert pool.call(calls.pid) != first
    finally:
        pool.close()


def test_a_busy_loop_is_killed_too() -> None:
    pool = DecodePool(limits(timeout_s=1.0))
    try:
        started = time.monotonic()
        with pytest.raises(DecodeLimitExceeded):
            pool.call(calls.spin, 30)
        assert time.monotonic() - started < 1.5
        assert pool.call(calls.echo, 2) == 2
    finally:
        pool.close()


def test_a_crashing_decoder_is_a_clean_error(pool: DecodePool) -> None:
    with pytest.raises(DecodeLimitExceeded) as caught:
        pool.call(calls.segfault)
    assert "SIGSEGV" in caught.value.message
    assert pool.call(calls.echo, 3) == 3


def test_exceptions_come_back_as_themselves(pool: DecodePool) -> None:
    with pytest.raises(ImageRejected) as caught:
        pool.call(calls.reject, "bad pixels")
    assert (caught.value.code, caught.value.message) == ("corrupt_image", "bad pixels")
    assert not isinstance(caught.value, DecodeLimitExceeded)


async def test_concurrent_calls_beyond_the_cap_wait_then_are_refused() -> None:
    decode_pool = DecodePool(limits(processes=1, max_waiting=1, queue_wait_s=0.5))
    try:
        await decode_pool.run(calls.echo, 0)  # start the child first: the timing below is about the cap
        results = await asyncio.gather(
            decode_pool.run(calls.sleep, 0.8), decode_pool.run(calls.echo, "waits"), decode_pool.run(calls.echo, "x"),
            return_exceptions=True,
        )
        assert results[0] == 0.8
        assert isinstance(results[1], DecodeBusy) and "decode_queue_wait_s" in results[1].message
        assert isinstance(results[2], DecodeBusy) and "decode_max_waiting" in results[2].message
        assert results[1].retry_after_s >= 1
        # A waiter within the wait is served, in order.
        slow = asyncio.create_task(decode_pool.run(calls.sleep, 0.2))
        await asyncio.sleep(0.05)
        assert await decode_pool.run(calls.echo, "served") == "served"
        await slow
    finally:
        decode_pool.close()


async def test_inflight_bytes_are_capped() -> None:
    decode_pool = DecodePool(limits(processes=2, max_inflight_bytes=100))
    try:
        await asyncio.gather(decode_pool.run(calls.echo, 0), decode_pool.run(calls.echo, 0))
        started = time.monotonic()
        # Two slots, but 80 + 80 bytes exceed the 100 in flight: the second waits for the first.
        await asyncio.gather(decode_pool.run(calls.sleep, 0.4, nbytes=80), decode_pool.run(calls.sleep, 0.4, nbytes=80))
        serial = time.monotonic() - started
        started = time.monotonic()
        await asyncio.gather(decode_pool.run(calls.sleep, 0.4, nbytes=40), decode_pool.run(calls.sleep, 0.4, nbytes=40))
        parallel = time.monotonic() - started
        assert serial >= 0.8, serial
        assert parallel < 0.7, parallel
        # One input larger than the whole cap still runs (alone).
        assert await decode_pool.run(calls.echo, "big", nbytes=10_000) == "big"
    finally:
        decode_pool.close()


async def test_a_cancelled_request_keeps_its_slot_until_the_decode_ends() -> None:
    decode_pool = DecodePool(limits(processes=1, queue_wait_s=5.0))
    try:
        await decode_pool.run(calls.echo, 0)
        task = asyncio.create_task(decode_pool.run(calls.sleep, 0.5))
        await asyncio.sleep(0.1)
        task.cancel()
        started = time.monotonic()
        assert await decode_pool.run(calls.echo, "after") == "after"
        assert time.monotonic() - started >= 0.3  # it waited for the cancelled one's decode
    finally:
        decode_pool.close()


def test_blocking_callers_share_the_cap(pool: DecodePool) -> None:
    import concurrent.futures

    pool.call(calls.echo, 0)
    with concurrent.futures.ThreadPoolExecutor(6) as threads:
        started = time.monotonic()
        pids = list(threads.map(lambda _: pool.call(calls.sleep, 0.3), range(6)))
    assert pids == [0.3] * 6
    assert time.monotonic() - started >= 0.9  # 6 calls, 2 at a time
    with pytest.raises(DecodeBusy):
        with concurrent.futures.ThreadPoolExecutor(2) as threads:
            busy = threads.submit(pool.call, calls.sleep, 0.5)
            busy2 = threads.submit(pool.call, calls.sleep, 0.5)
            time.sleep(0.1)
            try:
                pool.call(calls.echo, 1, wait_s=0.1)
            finally:
                busy.result(), busy2.result()


def test_the_parent_stays_small(pool: DecodePool) -> None:
    pool.call(calls.echo, 0)
    before = rss_bytes()
    for _ in range(4):
        assert pool.call(calls.allocate, 200 * MiB) == 200 * MiB
        with pytest.raises(DecodeLimitExceeded):
            pool.call(calls.allocate, 1024 * MiB)
    assert rss_bytes() - before < 30 * MiB


async def test_a_free_slot_goes_to_the_tenant_with_the_fewest_decodes_and_a_tenant_waits_in_bounds() -> None:
    decode_pool = DecodePool(limits(processes=1, max_waiting_per_tenant=2))
    finished: list[str] = []

    async def decode(tenant: str, name: str, seconds: float) -> None:
        await decode_pool.run(calls.sleep, seconds, party=tenant)
        finished.append(name)

    try:
        await decode_pool.run(calls.echo, 0)
        first = asyncio.create_task(decode("a", "a1", 0.3))
        await asyncio.sleep(0.05)
        flood = [asyncio.create_task(decode("a", f"a{i}", 0.05)) for i in (2, 3)]
        await asyncio.sleep(0.05)
        with pytest.raises(DecodeBusy) as refused:  # a's third waiter
            await decode_pool.run(calls.echo, 1, party="a")
        assert "decode_max_waiting_per_tenant" in refused.value.message
        other = asyncio.create_task(decode("b", "b1", 0.05))
        await asyncio.gather(first, *flood, other)
        # b arrived after a2 and a3 but had nothing running: it goes first.
        assert finished == ["a1", "b1", "a2", "a3"], finished
    finally:
        decode_pool.close()


def test_only_small_plain_pngs_are_checked_without_a_decode_process() -> None:
    import struct
    import zlib

    import cv2
    import numpy as np

    from medparse.decode_pool import decodes_inline
    from tests.support.factories import organ_image

    png = organ_image()[0]
    assert decodes_inline(png)  # the accept hot path (bench/accept.py) stays in the gateway process

    def with_header(width: int, height: int, interlace: int = 0) -> bytes:
        body = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, interlace)
        chunk = struct.pack(">I", 13) + b"IHDR" + body + struct.pack(">I", zlib.crc32(b"IHDR" + body))
        return png[:8] + chunk + png[33:]

    assert decodes_inline(with_header(1024, 1024))
    assert not decodes_inline(with_header(1024, 1024, interlace=1))  # Pillow's full decode
    assert not decodes_inline(with_header(20_000, 20_000))  # 400 MB declared in a few kB
    assert not decodes_inline(cv2.imencode(".jpg", np.zeros((8, 8), np.uint8))[1].tobytes())
    assert not decodes_inline(png + b"\0" * (256 * 1024))  # larger uploads: the decode process


def test_a_decode_process_the_machine_refuses_is_busy_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    from multiprocessing.process import BaseProcess

    pool = DecodePool(limits(processes=1))
    real_start = BaseProcess.start

    def refused(self: BaseProcess) -> None:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    try:
        monkeypatch.setattr(BaseProcess, "start", refused)
        with pytest.raises(DecodeBusy) as caught:
            pool.call(calls.echo, "refused")
        assert "no decode process could be started" in caught.value.message and caught.value.retry_after_s > 0
        monkeypatch.setattr(BaseProcess, "start", real_start)
        assert pool.call(calls.echo, "next") == "next"  # the slot was given back and works again
    finally:
        pool.close()
