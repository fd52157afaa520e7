"""Authentication and the single error envelope (problem+json) for every response."""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.typedefs import Handler
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError as RedisReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from gateway.errors import DomainError
from gateway.http.auth import OPERATOR, PRINCIPAL, Operator, authenticate
from gateway.http.problems import ApiProblem, problem_of, problem_response
from gateway.http.ratelimit import retry_after_header
from gateway.keys import AUTH_CACHE, CONCURRENT_REQUESTS, ENGINE, RATE_LIMITER, SETTINGS

log = logging.getLogger(__name__)

#: Errors meaning the database or Redis is unreachable or overloaded right now (not a bug):
#: answered 503 with Retry-After. PoolTimeoutError: every pooled connection stayed busy for
#: gateway_db_pool_timeout_s (a flood of requests, or slow statements).
BACKING_SERVICE_DOWN = (
    OperationalError, InterfaceError, PoolTimeoutError, ConnectionError, TimeoutError, socket.gaierror,
    RedisConnectionError, RedisTimeoutError, RedisReadOnlyError,
)

#: SQLSTATE classes and codes that say "not now" rather than "wrong": 08 connection exception,
#: 53 insufficient resources (too many connections, disk full), 57 operator intervention (57014:
#: statement_timeout cancelled the statement; 57P01: the server is shutting down), 55P03: a lock
#: wait passed lock_timeout. asyncpg's errors of these reach us as plain DBAPIError.
_RETRYABLE_SQLSTATE_CLASSES = ("08", "53", "57")
_RETRYABLE_SQLSTATES = frozenset({"55P03"})


def backing_service_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, BACKING_SERVICE_DOWN):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        if isinstance(sqlstate, str):
            return sqlstate[:2] in _RETRYABLE_SQLSTATE_CLASSES or sqlstate in _RETRYABLE_SQLSTATES
    return False


class BodyTimeout(asyncio.TimeoutError):
    """The request body did not arrive within its deadline (gateway_body_timeout_s + length / rate).

    A TimeoutError, so that aiohttp's lingering read after the response ends quietly."""


def _expire_body(payload: StreamReader) -> None:
    if not payload.is_eof():
        payload.set_exception(BodyTimeout())


@web.middleware
async def body_deadline_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A body must arrive in time: the handler's next read of a late body raises BodyTimeout (408).

    A timer on the payload stream rather than a timeout around the handler, which also waits for
    the database and for ``Prefer: wait``; one call_later per request with a body."""
    if not request.body_exists:
        return await handler(request)
    settings = request.app[SETTINGS]
    # Chunked (no length): as long as the largest body we accept; a longer one gets 413 anyway.
    length = min(request.content_length or settings.max_body_bytes, settings.max_body_bytes)
    budget = settings.gateway_body_timeout_s + length / settings.gateway_body_min_bytes_per_s
    timer = asyncio.get_running_loop().call_later(budget, _expire_body, request.content)
    try:
        return await handler(request)
    finally:
        timer.cancel()

HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


@web.middleware
async def problems_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiProblem as problem:
        return problem_response(problem, request.path)
    except DomainError as error:
        return problem_response(problem_of(error), request.path)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = HTTP_CODES.get(exc.status, f"http_{exc.status}")
        detail = exc.reason if exc.status != 413 else f"request body larger than {request.app._client_max_size} bytes"
        return problem_response(ApiProblem(exc.status, code, detail), request.path)
    except BodyTimeout:
        late = ApiProblem(408, "request_timeout", "the request body did not arrive in time")
        response = problem_response(late, request.path)
        response.force_close()  # the rest of the body may still be on its way
        return response
    except Exception as exc:
        if not backing_service_unavailable(exc):
            # Never echo internals (or request bytes) to the client; the id ties the log line to the reply.
            error_id = uuid.uuid4().hex[:12]
            log.exception("unhandled error %s on %s %s", error_id, request.method, request.path)
            internal = ApiProblem(500, "internal_error", f"internal error (reference {error_id})")
            return problem_response(internal, request.path)
        # The database or Redis is briefly away (restart, failover) or overloaded (pool exhausted,
        # statement timeout): retryable, and with the same Idempotency-Key a retry can never create
        # a second job.
        log.warning("dependency unavailable on %s %s: %s", request.method, request.path, type(exc).__name__)
        unavailable = ApiProblem(
            503, "service_unavailable", "a backing service is briefly unavailable or overloaded; retry shortly",
            headers={"Retry-After": "2"},
        )
        return problem_response(unavailable, request.path)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Who is calling (401 otherwise), within their tenant's request rate and its requests in progress
    (429 otherwise)."""
    if request.path.startswith("/v1/"):
        who = await authenticate(
            request.app[ENGINE], request.app[SETTINGS], request.headers.get("Authorization"), request.app[AUTH_CACHE]
        )
        if isinstance(who, Operator):  # no tenant: no tenant's rate; its routes check for it (gateway/http/auth.py)
            request[OPERATOR] = who
            return await handler(request)
        decision = await request.app[RATE_LIMITER].take(
            who.tenant_id, who.quotas.rate_limit_rps, who.quotas.rate_limit_burst
        )
        if not decision.allowed:
            raise ApiProblem(
                429, "rate_limited",
                f"more than {who.quotas.rate_limit_rps:g} requests per second for this tenant; retry later",
                headers={"Retry-After": retry_after_header(decision.retry_after_s)},
            )
        request[PRINCIPAL] = who
        with request.app[CONCURRENT_REQUESTS].hold(who.tenant_id):
            return await handler(request)
    return await handler(request)
