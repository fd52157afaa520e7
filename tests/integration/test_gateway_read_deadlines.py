"""Slow clients against a real gateway process over raw sockets: the header deadline, the body
deadline and the connection cap (gateway/http/serving.py, gateway/http/middleware.py)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from medparse.settings import Settings
from tests.support.factories import new_tenant
from tests.support.ports import free_port
from tests.support.processes import settings_env, start, stop, wait_http

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
MAX_CONNECTIONS = 8


@dataclass
class Gateway:
    port: int
    key: str
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return sock


@pytest.fixture
def gateway(pg_settings: Settings, tmp_path: Path) -> Iterator[Gateway]:
    """One gateway process with small deadlines and a small connection cap."""
    port = free_port()
    env = settings_env(pg_settings, **{
        "MEDPARSE_PORT": str(port),
        "MEDPARSE_GATEWAY_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "MEDPARSE_GATEWAY_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        # so that the body deadline is BODY_TIMEOUT_S for these small bodies
        "MEDPARSE_GATEWAY_BODY_MIN_BYTES_PER_S": str(100 * 1024 * 1024),
        "MEDPARSE_GATEWAY_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    })
    proc = start(["serve", "--processes", "1"], env, tmp_path / "gateway.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        yield Gateway(port, new_tenant(pg_settings)[1], proc)
    finally:
        stop(proc)
    assert proc.returncode == 0, (tmp_path / "gateway.log").read_text()


def _closed_after(sock: socket.socket, limit_s: float) -> tuple[float, bytes]:
    """Seconds until the server closed ``sock`` (reading what it sent), at most ``limit_s``."""
    began = time.monotonic()
    sock.settimeout(limit_s)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return time.monotonic() - began, received


def _stalled_upload(gateway: Gateway, sent: int = 100, declared: int = 100_000) -> socket.socket:
    """A job submission whose body stops after ``sent`` of ``declared`` bytes."""
    sock = gateway.connect()
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {gateway.key}\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {declared}\r\n\r\n"
    )
    sock.sendall(head.encode() + b"--b\r\n" + b"x" * (sent - 5))
    return sock


def test_a_head_sent_a_byte_at_a_time_is_cut_off_at_the_header_deadline(gateway: Gateway) -> None:
    with closing(gateway.connect()) as sock:
        began = time.monotonic()
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
        closed = False
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            sock.settimeout(0.2)
            try:
                if sock.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
        elapsed = time.monotonic() - began
    assert closed, "the server kept a trickling request head open"
    assert HEADER_TIMEOUT_S - 0.1 <= elapsed < HEADER_TIMEOUT_S + 1.5, elapsed
    assert httpx.get(f"{gateway.url}/healthz").status_code == 200


def test_an_idle_connection_that_sent_nothing_is_not_cut_by_the_header_deadline(gateway: Gateway) -> None:
    # The header deadline starts at a head's first byte; idle keep-alive is the keep-alive timer's.
    with closing(gateway.connect()) as sock:
        time.sleep(HEADER_TIMEOUT_S + 0.5)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        _, received = _closed_after(sock, 5)
    assert received.startswith(b"HTTP/1.1 200"), received[:100]


def test_a_body_that_stops_midway_gets_408_at_the_body_deadline(gateway: Gateway) -> None:
    with closing(_stalled_upload(gateway)) as sock:
        elapsed, received = _closed_after(sock, 10)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), received[:200]
    assert b"Connection: close" in head
    assert json.loads(body)["code"] == "request_timeout"
    assert BODY_TIMEOUT_S - 0.1 <= elapsed < BODY_TIMEOUT_S + 2, elapsed
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {gateway.key}"}) as http:
        assert http.get("/v1/jobs").json()["data"] == []  # nothing half-written


def test_idle_and_slow_head_connections_beyond_the_cap_never_lock_out_a_new_client(gateway: Gateway) -> None:
    with ExitStack() as held:
        idle = [held.enter_context(closing(gateway.connect())) for _ in range(MAX_CONNECTIONS * 3)]
        for sock in idle[::2]:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # an unfinished head
        for _ in range(5):
            began = time.monotonic()
            assert httpx.get(f"{gateway.url}/healthz", timeout=2).status_code == 200
            assert time.monotonic() - began < 0.5
        # the oldest idle connections were closed to make room
        evicted = 0
        for sock in idle[: MAX_CONNECTIONS * 2]:
            sock.settimeout(2)
            try:
                evicted += sock.recv(1) == b""
            except ConnectionResetError:
                evicted += 1
        assert evicted >= MAX_CONNECTIONS * 2 - 1


def test_unauthenticated_uploads_that_stall_after_their_401_never_lock_out_a_new_client(gateway: Gateway) -> None:
    # Each gets its 401 at once, and aiohttp then drains ("lingers" on) the body for up to 10 s:
    # answered connections, so they are closed first when the cap is reached.
    head = b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
    with ExitStack() as held:
        socks = [held.enter_context(closing(gateway.connect())) for _ in range(MAX_CONNECTIONS * 2)]
        for sock in socks:
            sock.sendall(head)
        for sock in socks[-MAX_CONNECTIONS:]:  # the ones still open got their answer
            sock.settimeout(2)
            assert sock.recv(12) == b"HTTP/1.1 401"
        for _ in range(3):
            began = time.monotonic()
            assert httpx.get(f"{gateway.url}/healthz", timeout=2).status_code == 200
            assert time.monotonic() - began < 0.5


def test_at_the_cap_with_every_connection_mid_request_a_new_one_gets_503_and_then_recovers(
    gateway: Gateway,
) -> None:
    with ExitStack() as held:
        for _ in range(MAX_CONNECTIONS):
            held.enter_context(closing(_stalled_upload(gateway)))
        time.sleep(0.3)  # their handlers are now waiting for the bodies
        began = time.monotonic()
        with closing(gateway.connect()) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            _, received = _closed_after(sock, 5)
        assert time.monotonic() - began < 0.5
        assert received.startswith(b"HTTP/1.1 503"), received[:100]
        assert b"Retry-After: 1" in received and b"too_many_connections" in received
        # the stalled bodies end at their deadline, and the cap frees up
        time.sleep(BODY_TIMEOUT_S + 0.5)
        assert httpx.get(f"{gateway.url}/healthz", timeout=2).status_code == 200
