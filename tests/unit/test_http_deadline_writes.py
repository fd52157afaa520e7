"""The deadline also bounds sending a large request body to a peer that reads it slowly: one
``write`` of the whole body is many ``send`` calls, each of which may wait up to the time that was
left when the write began (medparse/http_deadline.py)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from medparse.http_deadline import deadline_in, deadline_transport

#: about 1.6 MB/s: every single send makes progress well within any timeout
READ_BYTES, READ_EVERY_S = 16384, 0.01


@pytest.fixture
def slow_reader_url() -> Iterator[str]:
    server = socket.create_server(("127.0.0.1", 0))
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # small kernel buffers: the body must be read
    stopped = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while not stopped.is_set():
                time.sleep(READ_EVERY_S)
                try:
                    if not conn.recv(READ_BYTES):
                        return
                except OSError:
                    return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/"
    stopped.set()
    server.close()
    thread.join(5)


def test_a_slowly_read_request_body_ends_at_the_deadline(slow_reader_url: str) -> None:
    transport = deadline_transport(retries=0, socket_options=[(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)])
    body = b"x" * 4_000_000  # ~2.5 s at the reader's pace
    request = httpx.Request("POST", slow_reader_url, content=body, extensions={"timeout": httpx.Timeout(5.0).as_dict()})
    began = time.monotonic()
    with pytest.raises(httpx.TimeoutException), deadline_in(1.0):
        transport.handle_request(request)
    elapsed = time.monotonic() - began
    transport.close()
    assert elapsed < 1.8, elapsed
