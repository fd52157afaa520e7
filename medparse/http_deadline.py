"""A wall-clock deadline for a whole HTTP exchange, which httpx's timeouts are not.

httpx bounds each connect, read and write on its own, so a peer that sends one byte every few
seconds never trips a read timeout and holds the calling thread for as long as it likes. Here the
network streams httpcore opens are wrapped: every connect, TLS handshake, read and write gets at
most the time left before the caller's deadline, and none starts after it (``httpcore.ReadTimeout``
and friends, which httpx maps to its own ``httpx.TimeoutException`` subclasses).

The deadline is a context variable set around the call (``with deadline_at(t): client.post(...)``):
httpx's sync API does its I/O in the calling thread, so pooled connections shared by several
threads each obey their current caller's deadline. Nested deadlines keep the earlier one, so a
job's overall deadline also caps every request made for it.
"""

from __future__ import annotations

import ssl
import time
import typing
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import httpcore
import httpx

_DEADLINE: ContextVar[float | None] = ContextVar("medparse_http_deadline", default=None)
#: bytes per bounded write (see DeadlineStream.write)
_WRITE_PIECE = 16384


@contextmanager
def deadline_at(monotonic_at: float) -> Iterator[None]:
    """Every HTTP exchange in this block (this thread/context) ends by ``monotonic_at`` (time.monotonic)."""
    current = _DEADLINE.get()
    token = _DEADLINE.set(monotonic_at if current is None else min(current, monotonic_at))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def deadline_in(seconds: float) -> typing.ContextManager[None]:
    return deadline_at(time.monotonic() + seconds)


def remaining_s() -> float | None:
    """Seconds left before the current deadline; None when there is none."""
    at = _DEADLINE.get()
    return None if at is None else at - time.monotonic()


def _bound(timeout: float | None, error: type[Exception]) -> float | None:
    left = remaining_s()
    if left is None:
        return timeout
    if left <= 0:
        raise error("the request's deadline passed")
    return left if timeout is None else min(timeout, left)


class DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _bound(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # In pieces: one write of a whole request body is many send() calls, each allowed the time
        # that was left when the write began, so a peer reading a large body slowly would stretch a
        # single write far past the deadline. A piece is a few sends at most (the socket is writable
        # only with a third of its buffer free), each piece gets the time left when it starts.
        if len(buffer) <= _WRITE_PIECE:
            self._inner.write(buffer, _bound(timeout, httpcore.WriteTimeout))
            return
        view = memoryview(buffer)
        for start in range(0, len(view), _WRITE_PIECE):
            self._inner.write(bytes(view[start:start + _WRITE_PIECE]), _bound(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        tls = self._inner.start_tls(ssl_context, server_hostname, _bound(timeout, httpcore.ConnectTimeout))
        return DeadlineStream(tls)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend | None = None) -> None:
        self._inner = inner or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(
            host, port, _bound(timeout, httpcore.ConnectTimeout), local_address, socket_options
        )
        return DeadlineStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_unix_socket(path, _bound(timeout, httpcore.ConnectTimeout), socket_options)
        return DeadlineStream(stream)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def deadline_transport(**kwargs: typing.Any) -> httpx.HTTPTransport:
    """An ``httpx.HTTPTransport`` (same arguments) whose connections obey ``deadline_at``.

    httpx has no argument for httpcore's network backend, so it is swapped on the pool it built;
    the assertion makes an httpx/httpcore upgrade that moves it fail loudly at start-up (and in
    tests/unit/test_http_deadline.py), never silently lose the deadline.
    """
    if kwargs.get("proxy") is not None:
        raise ValueError("deadline_transport does not support proxies")
    transport = httpx.HTTPTransport(**kwargs)
    pool = transport._pool
    if not isinstance(pool, httpcore.ConnectionPool) or not hasattr(pool, "_network_backend"):
        raise RuntimeError("httpcore's ConnectionPool changed: cannot install the deadline backend")
    pool._network_backend = DeadlineBackend(pool._network_backend)
    return transport
