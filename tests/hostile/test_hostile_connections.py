"""Hostile clients against the production shape (stack.py): slow heads, stalled bodies, a
connection flood, a gateway process killed, bogus API keys against a tiny database pool.

Each asserts the answer, that /healthz kept answering within 1 s, that the gateway processes are
alive (or were replaced), their peak RSS, and that another tenant's job still completes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable

import httpx
import psycopg

from medparse.settings import to_sync_url
from tests.support.stack import HealthWatch, Stack, peak_rss_mb

#: Small deadlines so that each attack takes seconds; the code paths are those of the defaults.
FAST_DEADLINES = {
    "MEDPARSE_GATEWAY_HEADER_TIMEOUT_S": "1",
    "MEDPARSE_GATEWAY_BODY_TIMEOUT_S": "1",
    "MEDPARSE_GATEWAY_BODY_MIN_BYTES_PER_S": str(100 * 1024 * 1024),
}


def _host_port(stack: Stack) -> tuple[str, int]:
    host, port = stack.base_url.removeprefix("http://").split(":")
    return host, int(port)


def _gateway_peak_rss(stack: Stack) -> float:
    return max((peak_rss_mb(pid) for pid in stack.gateway_pids()), default=0.0)


async def _closed_within(reader: asyncio.StreamReader, limit_s: float) -> tuple[float, bytes]:
    began = time.monotonic()
    received = b""
    try:
        async with asyncio.timeout(limit_s):
            while chunk := await reader.read(65536):
                received += chunk
    except ConnectionResetError:
        pass
    return time.monotonic() - began, received


def test_slowloris_heads_are_cut_off_at_the_header_deadline(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(**FAST_DEADLINES)
    host, port = _host_port(stack)

    async def trickle() -> float:
        reader, writer = await asyncio.open_connection(host, port)
        began = time.monotonic()
        try:
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
                if reader.at_eof():
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                try:
                    async with asyncio.timeout(0.25):
                        if await reader.read(1) == b"":
                            break
                except TimeoutError:
                    pass
        except ConnectionError:
            pass
        finally:
            writer.close()
        return time.monotonic() - began

    async def attack() -> list[float]:
        return await asyncio.gather(*(trickle() for _ in range(100)))

    with HealthWatch(stack.base_url) as watch:
        held_for = asyncio.run(attack())
        job = stack.check_other_tenant_completes()
    watch.assert_healthy(limit_s=1.0)
    assert max(held_for) < 1.0 + 1.5, f"a trickling head held its socket {max(held_for):.1f} s"
    assert min(held_for) >= 0.9
    stack.assert_gateway_alive()
    assert job["status"] == "succeeded"
    print(f"slowloris: 100 heads closed after {min(held_for):.2f}-{max(held_for):.2f} s; "
          f"/healthz max {watch.max_latency_s:.3f} s; gateway peak RSS {_gateway_peak_rss(stack):.0f} MiB")


def test_stalled_bodies_get_408_at_the_body_deadline(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(**FAST_DEADLINES)
    key = stack.new_tenant()
    host, port = _host_port(stack)

    async def stall() -> tuple[float, bytes]:
        reader, writer = await asyncio.open_connection(host, port)
        head = (
            f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000\r\n\r\n"
        )
        writer.write(head.encode() + b"--b\r\n" + b"x" * 1000)
        await writer.drain()
        try:
            return await _closed_within(reader, 10)
        finally:
            writer.close()

    async def attack() -> list[tuple[float, bytes]]:
        return await asyncio.gather(*(stall() for _ in range(40)))

    with HealthWatch(stack.base_url) as watch:
        answers = asyncio.run(attack())
        job = stack.check_other_tenant_completes()
    watch.assert_healthy(limit_s=1.0)
    for elapsed, received in answers:
        assert received.startswith(b"HTTP/1.1 408"), received[:120]
        assert b'"code":"request_timeout"' in received
        assert elapsed < 1.0 + 2.0, elapsed
    with stack.client(key) as http:
        assert http.get("/v1/jobs").json()["data"] == []  # no half-written job
    stack.assert_gateway_alive()
    assert job["status"] == "succeeded"
    print(f"stalled bodies: 40 x 408 after {max(e for e, _ in answers):.2f} s at most; "
          f"/healthz max {watch.max_latency_s:.3f} s; gateway peak RSS {_gateway_peak_rss(stack):.0f} MiB")


def test_a_flood_of_idle_connections_beyond_the_cap_locks_nobody_out(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(**FAST_DEADLINES, MEDPARSE_GATEWAY_MAX_CONNECTIONS="50")
    host, port = _host_port(stack)
    rss_before = _gateway_peak_rss(stack)

    async def flood() -> int:
        opened: list[asyncio.StreamWriter] = []
        try:
            for i in range(600):  # 6x the cap of the two processes together
                _, writer = await asyncio.open_connection(host, port)
                if i % 3 == 0:
                    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # a head that never ends
                opened.append(writer)
            await asyncio.sleep(0.5)
            return sum(1 for w in opened if w.transport.is_closing() or w.transport.get_extra_info("socket") is None)
        finally:
            for writer in opened:
                writer.close()

    with HealthWatch(stack.base_url) as watch:
        asyncio.run(flood())
        with httpx.Client(base_url=stack.base_url, timeout=2) as http:  # fresh connections get in
            for _ in range(20):
                assert http.get("/healthz", headers={"Connection": "close"}).status_code == 200
        job = stack.check_other_tenant_completes()
    watch.assert_healthy(limit_s=1.0)
    stack.assert_gateway_alive()
    assert job["status"] == "succeeded"
    rss_after = _gateway_peak_rss(stack)
    assert rss_after < rss_before + 100, (rss_before, rss_after)
    print(f"connection flood: 600 connections at a cap of 2 x 50; /healthz max {watch.max_latency_s:.3f} s; "
          f"gateway peak RSS {rss_before:.0f} -> {rss_after:.0f} MiB")


def test_a_killed_gateway_process_is_replaced(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(MEDPARSE_GATEWAY_RESTART_BACKOFF_MIN_S="0.5")
    before = stack.gateway_pids()
    # A SIGKILL loses what the killed process held: requests it was answering, and (SO_REUSEPORT:
    # each process has its own accept queue) connections queued on its socket or arriving while
    # the kernel closes it. So a probe or two may fail at the instant of the kill; after it, the
    # sibling answers everything, and the replacement joins it.
    with HealthWatch(stack.base_url) as at_kill:
        os.kill(before[0], signal.SIGKILL)  # as the OOM killer would
        began = time.monotonic()
        while set(stack.gateway_pids()) - set(before) == set():
            assert time.monotonic() - began < 10, "no replacement gateway process"
            time.sleep(0.02)
        replaced_after = time.monotonic() - began
    with HealthWatch(stack.base_url) as after:
        job = stack.check_other_tenant_completes()
    after.assert_healthy(limit_s=1.0)
    assert at_kill.max_latency_s < 1.0
    # only connections the kill cut (refused or reset), never a slow or a 5xx answer
    assert len(at_kill.failures) <= 5 and all(f.endswith("Error") for f in at_kill.failures), at_kill.failures
    assert len(at_kill.latencies) > len(at_kill.failures)  # the sibling kept answering meanwhile
    stack.assert_gateway_alive()
    assert before[0] not in stack.gateway_pids() and before[1] in stack.gateway_pids()
    assert 0.45 <= replaced_after < 3.0, replaced_after
    assert "exited unasked (killed by SIGKILL)" in stack.log("gateway")
    assert job["status"] == "succeeded"
    print(f"gateway process SIGKILLed: replaced after {replaced_after:.2f} s; probes at the kill "
          f"{len(at_kill.latencies)} ({len(at_kill.failures)} failed), /healthz max {at_kill.max_latency_s:.3f} s "
          f"then {after.max_latency_s:.3f} s")


def test_bogus_keys_against_a_tiny_database_pool_get_401_or_503_never_500(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(MEDPARSE_GATEWAY_DB_POOL_SIZE="1", MEDPARSE_GATEWAY_DB_POOL_TIMEOUT_S="0.1")
    conninfo = to_sync_url(stack.settings.async_database_url).replace("postgresql+psycopg://", "postgresql://")

    locked = threading.Event()

    def slow_database() -> None:
        # For a moment every key lookup waits for a lock: the pool's one connection stays busy.
        with psycopg.connect(conninfo) as conn:
            conn.execute("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
            locked.set()
            time.sleep(1.5)
            conn.rollback()

    async def flood() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=40, max_keepalive_connections=40)
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=30, limits=limits) as http:
            async def one() -> httpx.Response:
                bogus = f"mpk_{uuid.uuid4().hex[:16]}_{uuid.uuid4().hex}"
                return await http.get("/v1/jobs", headers={"Authorization": f"Bearer {bogus}"})

            return await asyncio.gather(*(one() for _ in range(300)))

    locker = threading.Thread(target=slow_database)
    with HealthWatch(stack.base_url) as watch:
        began = time.monotonic()
        locker.start()
        assert locked.wait(10), "could not lock api_keys"
        responses = asyncio.run(flood())  # starts with the lock held: its 503s do not depend on timing
        took = time.monotonic() - began
        locker.join()
        job = stack.check_other_tenant_completes()
    statuses = Counter(r.status_code for r in responses)
    # 503 while the pool's one connection waits on the lock; 401 for the lookups that got it.
    assert set(statuses) <= {401, 503} and statuses[503] and statuses[401], statuses
    for response in responses:
        if response.status_code == 503:
            assert response.headers["Retry-After"] == "2"
            assert response.json()["code"] == "service_unavailable"
    assert "unhandled error" not in stack.log("gateway")  # what the gateway logs for a 500
    watch.assert_healthy(limit_s=1.0)
    stack.assert_gateway_alive()
    assert job["status"] == "succeeded"
    print(f"bogus keys, pool of 1, api_keys locked 1.5 s: {dict(statuses)} in {took:.1f} s; "
          f"/healthz max {watch.max_latency_s:.3f} s; gateway peak RSS {_gateway_peak_rss(stack):.0f} MiB")
