"""Authentication and the single error envelope (problem+json) for every response."""

from __future__ import annotations

import logging
import uuid

from aiohttp import web
from aiohttp.typedefs import Handler
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import InterfaceError, OperationalError

from gateway.auth import PRINCIPAL, authenticate
from gateway.keys import AUTH_CACHE, ENGINE, RATE_LIMITER, SETTINGS
from gateway.problems import ApiProblem, problem_response
from gateway.ratelimit import retry_after_header

log = logging.getLogger(__name__)

#: Errors meaning the database or Redis is unreachable right now (not a bug): answered 503.
BACKING_SERVICE_DOWN = (
    OperationalError, InterfaceError, ConnectionError, TimeoutError, RedisConnectionError, RedisTimeoutError
)

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
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = HTTP_CODES.get(exc.status, f"http_{exc.status}")
        detail = exc.reason if exc.status != 413 else f"request body larger than {request.app._client_max_size} bytes"
        return problem_response(ApiProblem(exc.status, code, detail), request.path)
    except BACKING_SERVICE_DOWN as exc:
        # The database or Redis is briefly away (restart, failover): retryable, and with the same
        # Idempotency-Key a retry can never create a second job.
        log.warning("dependency unavailable on %s %s: %s", request.method, request.path, type(exc).__name__)
        unavailable = ApiProblem(
            503, "service_unavailable", "a backing service is briefly unavailable; retry shortly",
            headers={"Retry-After": "2"},
        )
        return problem_response(unavailable, request.path)
    except Exception:
        # Never echo internals (or request bytes) to the client; the id ties the log line to the reply.
        error_id = uuid.uuid4().hex[:12]
        log.exception("unhandled error %s on %s %s", error_id, request.method, request.path)
        internal = ApiProblem(500, "internal_error", f"internal error (reference {error_id})")
        return problem_response(internal, request.path)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Who is calling (401 otherwise), and within their tenant's request rate (429 otherwise)."""
    if request.path.startswith("/v1/"):
        who = await authenticate(
            request.app[ENGINE], request.app[SETTINGS], request.headers.get("Authorization"), request.app[AUTH_CACHE]
        )
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
    return await handler(request)
