"""Running one gateway process: aiohttp's server with a header deadline and a connection cap.

aiohttp bounds the size of a request head (8190-byte lines, 128 headers) and closes an idle
keep-alive connection after ``keepalive_timeout``, but it has no deadline for a head that arrives
one byte at a time, and no cap on open connections: slow clients could hold sockets (and file
descriptors) without end. The two small subclasses below add both; the body deadline is a
middleware (gateway/http/middleware.py) because bodies are read by the handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from gateway.app import create_app
from medparse.settings import Settings

log = logging.getLogger(__name__)

#: Open files a gateway process needs besides its client connections (database and Redis pools,
#: the listening socket, logs), for raising RLIMIT_NOFILE to fit the connection cap.
_OTHER_OPEN_FILES = 256


def _refusal() -> bytes:
    body = orjson.dumps({
        "type": "https://medparse.dev/problems/too_many_connections",
        "title": "Too many connections",
        "status": 503,
        "code": "too_many_connections",
        "detail": "this gateway process has reached its connection cap; retry shortly",
    })
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/problem+json\r\n"
        f"Retry-After: 1\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


REFUSAL = _refusal()


class GatewayConnection(RequestHandler):
    """aiohttp's connection handler, plus: a request head must be complete ``header_timeout_s``
    after its first byte arrived, or the connection is closed (slowloris)."""

    def __init__(self, manager: web.Server, *, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._head_timer: asyncio.TimerHandle | None = None
        #: a request of this connection was taken and its handler has not returned yet
        self.answering = False

    @property
    def idle(self) -> bool:
        """Closing it loses no work: it waits for a request head (keep-alive idle, or a head still
        arriving), or only drains the body of a request already answered (aiohttp's lingering read,
        up to 10 s: a 401 to an unauthenticated upload, say)."""
        if self._force_close or self._request_in_progress:
            return False
        waiter = self._waiter
        return (waiter is not None and not waiter.done()) or not self.answering

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and data and not self._messages and not self._request_in_progress:
            self._head_timer = self._loop.call_later(self._header_timeout_s, self._head_overdue)
        super().data_received(data)
        if self._head_timer is not None and (self._messages or self._request_in_progress):
            self._head_timer.cancel()
            self._head_timer = None

    def _head_overdue(self) -> None:
        self._head_timer = None
        if not self._messages and not self._request_in_progress:
            log.debug("closed a connection whose request head took over %.0f s", self._header_timeout_s)
            self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)


class GatewayServer(web.Server):
    """aiohttp's server with at most ``max_connections`` open connections.

    At the cap, a new connection closes the longest-open idle one (no request being handled: an
    idle keep-alive connection, a slow head, a body drained after its answer), so idle, slowloris
    and unauthenticated-upload connections can never lock out a new client, ``/healthz`` included.
    Only when every connection has a request in its handler is the new one answered 503 (before
    its request is read) and closed at once: its socket is not kept.
    """

    def __init__(self, *args: Any, max_connections: int, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Mark a connection "answering" from the moment aiohttp takes a request off it until the
        # app's handler returned: between the two it is neither idle nor in _request_in_progress.
        make_request, handle = self.request_factory, self.request_handler

        def request_factory(
            message: Any, payload: Any, protocol: RequestHandler, writer: Any, task: Any
        ) -> web.BaseRequest:
            if isinstance(protocol, GatewayConnection):
                protocol.answering = True
            return make_request(message, payload, protocol, writer, task)

        async def request_handler(request: web.BaseRequest) -> web.StreamResponse:
            try:
                return await handle(request)
            finally:
                if isinstance(request.protocol, GatewayConnection):
                    request.protocol.answering = False

        self.request_factory, self.request_handler = request_factory, request_handler
        self._max_connections = max_connections
        self._header_timeout_s = header_timeout_s
        #: connections refused or evicted at the cap, since start-up
        self.evicted = 0
        self.refused = 0

    def __call__(self) -> RequestHandler:
        return GatewayConnection(self, loop=self._loop, header_timeout_s=self._header_timeout_s, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        if len(self._connections) <= self._max_connections:
            return
        # Over the cap (rare): the count includes connections already closing, so count again.
        open_ = [c for c in self._connections if not c._force_close]
        if len(open_) <= self._max_connections:
            return
        victim = next((c for c in open_ if c is not handler and isinstance(c, GatewayConnection) and c.idle), None)
        if victim is not None:
            self.evicted += 1
            victim.force_close()
            return
        self.refused += 1
        if self.refused == 1 or self.refused % 1000 == 0:
            log.warning("connection cap %d reached with every connection busy: refused %d connection(s)",
                        self._max_connections, self.refused)
        # Closed on the next loop turn: aiohttp starts the connection's task after this returns,
        # and that task must still find the connection open. Until then no request is taken.
        handler.close()
        transport.write(REFUSAL)
        self._loop.call_soon(handler.force_close)


class GatewayRunner(web.AppRunner):
    def __init__(self, app: web.Application, settings: Settings, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._settings = settings

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # runs the app's startup, builds aiohttp's own server
        return GatewayServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=asyncio.get_running_loop(),
            max_connections=self._settings.gateway_max_connections,
            header_timeout_s=self._settings.gateway_header_timeout_s,
            **plain._kwargs,
        )


def fit_open_files_limit(max_connections: int) -> int:
    """Raise the soft RLIMIT_NOFILE so the connection cap fits (running out of descriptors makes
    accept() fail for everyone); returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + _OTHER_OPEN_FILES
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning("open files limit %d is below the connection cap %d + %d; lower "
                    "MEDPARSE_GATEWAY_MAX_CONNECTIONS or raise the limit", soft, max_connections, _OTHER_OPEN_FILES)
    return soft


async def _serve(settings: Settings, reuse_port: bool) -> None:
    runner = GatewayRunner(
        create_app(settings), settings, handle_signals=True, access_log=None,
        keepalive_timeout=settings.gateway_keepalive_timeout_s,
        shutdown_timeout=settings.gateway_shutdown_timeout_s,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port, reuse_port=reuse_port)
        await site.start()
        await asyncio.Event().wait()  # until SIGTERM/SIGINT raises GracefulExit out of the loop
    finally:
        await runner.cleanup()


def run_gateway(settings: Settings, *, reuse_port: bool) -> None:
    """What ``web.run_app`` does, with our runner: serve until SIGTERM/SIGINT, then shut down
    gracefully (requests in progress get ``gateway_shutdown_timeout_s``)."""
    fit_open_files_limit(settings.gateway_max_connections)
    try:  # about 10 % less CPU per request than asyncio's own loop (bench/accept.py); not on Windows
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(_serve(settings, reuse_port))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        if not main.done():
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(main)
        rest = asyncio.all_tasks(loop)
        for task in rest:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
