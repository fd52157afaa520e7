"""The wall-clock deadline of an HTTP exchange against a real socket that trickles its answer."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from medparse.http_deadline import deadline_at, deadline_in, deadline_transport, remaining_s


class TrickleServer:
    """Accepts connections, reads the request head, then sends one byte every ``interval_s`` forever
    (or the whole ``answer`` at once when given)."""

    def __init__(self, interval_s: float, answer: bytes | None = None) -> None:
        self.interval_s = interval_s
        self.answer = answer
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            if self.answer is not None:
                conn.sendall(self.answer)
                return
            head = b"HTTP/1.1 200 OK\r\nx-trickle: "
            i = 0
            while not self.stopped.is_set():
                try:
                    conn.sendall(head[i:i + 1] if i < len(head) else b"a")
                except OSError:
                    return
                i += 1
                time.sleep(self.interval_s)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def trickle() -> Iterator[TrickleServer]:
    server = TrickleServer(0.1)
    yield server
    server.close()


def test_a_trickling_answer_ends_at_the_deadline_although_no_read_times_out(trickle: TrickleServer) -> None:
    with httpx.Client(transport=deadline_transport(), timeout=5.0) as client:
        began = time.monotonic()
        with pytest.raises(httpx.TimeoutException), deadline_in(1.0):
            client.post(trickle.url, content=b"{}")
        elapsed = time.monotonic() - began
    assert 0.9 <= elapsed < 1.5, elapsed


def test_without_a_deadline_the_per_read_timeout_alone_does_not_end_it(trickle: TrickleServer) -> None:
    # What the deadline is for: 2.5 s of trickling and the 1 s read timeout never fired.
    finished = threading.Event()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            with httpx.Client(transport=deadline_transport(), timeout=1.0) as client:
                client.post(trickle.url, content=b"{}")
        except BaseException as exc:  # the test ends the server; whatever ends the call is recorded
            errors.append(exc)
        finished.set()

    threading.Thread(target=call, daemon=True).start()
    assert not finished.wait(2.5)
    trickle.close()
    assert finished.wait(5)


def test_an_answer_within_the_deadline_is_unaffected() -> None:
    server = TrickleServer(0.1, answer=b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
    try:
        with httpx.Client(transport=deadline_transport(), timeout=5.0) as client, deadline_in(2.0):
            response = client.post(server.url, content=b"{}")
        assert (response.status_code, response.content) == (200, b"ok")
    finally:
        server.close()


def test_nested_deadlines_keep_the_earlier_one() -> None:
    assert remaining_s() is None
    with deadline_in(1.0):
        with deadline_in(100.0):
            left = remaining_s()
            assert left is not None and left <= 1.0
        with deadline_at(time.monotonic() + 0.2):
            left = remaining_s()
            assert left is not None and left <= 0.2
    assert remaining_s() is None


def test_a_passed_deadline_refuses_to_connect(trickle: TrickleServer) -> None:
    with httpx.Client(transport=deadline_transport(), timeout=5.0) as client:
        with pytest.raises(httpx.ConnectTimeout), deadline_at(time.monotonic() - 1):
            client.post(trickle.url, content=b"{}")
