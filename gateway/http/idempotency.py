"""``Idempotency-Key`` over HTTP: the header, each route's handling of it, and the middleware.

The mechanism itself (claim, replay, store) is gateway/idempotency.py. Each POST handler says how
it takes a key (``handles_key``): by default the middleware claims it before the handler and stores
the first 2xx answer after it; a use case that stores its answer in its own transaction
(``KeyHandling.IN_USE_CASE``: submit) gets the key from its handler; a route whose answer holds a
secret (``KeyHandling.REFUSED``) answers 400 to the header.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import idempotency
from gateway.http.auth import OPERATOR, PRINCIPAL
from gateway.http.problems import field_error
from gateway.keys import ENGINE, SETTINGS

HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 255
_ASCII_PRINTABLE = re.compile(r"[\x20-\x7e]+")


class KeyHandling(enum.Enum):
    #: the middleware claims the key, then stores the handler's first 2xx answer for replay
    REPLAYED = "replayed"
    #: the use case claims the key and stores its answer in its own transaction
    IN_USE_CASE = "in_use_case"
    #: the answer holds a secret (a new API key, a rotated webhook secret): storing it for replay
    #: would keep the secret in the clear, so an Idempotency-Key is refused (400) instead
    REFUSED = "refused"


_ATTRIBUTE = "__idempotency_key_handling__"
H = TypeVar("H", bound=Callable[..., Any])


def handles_key(handling: KeyHandling) -> Callable[[H], H]:
    """Route metadata on a POST handler: how it takes an Idempotency-Key (default: REPLAYED)."""

    def mark(handler: H) -> H:
        setattr(handler, _ATTRIBUTE, handling)
        return handler

    return mark


def handling_of(handler: Callable[..., Any]) -> KeyHandling:
    handling: KeyHandling = getattr(handler, _ATTRIBUTE, KeyHandling.REPLAYED)
    return handling


def key_from(request: web.Request) -> str | None:
    values = request.headers.getall(HEADER, [])
    if not values:
        return None
    if len(values) > 1:
        raise field_error(HEADER, "send the header once", status=400)
    key = values[0].strip().strip('"')
    # The draft makes the key a structured-field string: printable ASCII only.
    if not key or len(key) > MAX_KEY_CHARS or not _ASCII_PRINTABLE.fullmatch(key):
        raise field_error(HEADER, f"1 to {MAX_KEY_CHARS} printable ASCII characters", status=400)
    return key


def replayed(answer: idempotency.StoredAnswer) -> web.Response:
    headers = {**answer.headers, "Idempotent-Replayed": "true"}
    return web.Response(status=answer.status, body=answer.body, headers=headers)


def answer_of(response: web.Response) -> idempotency.StoredAnswer:
    headers = {k: v for k, v in response.headers.items() if k in idempotency.STORED_HEADERS}
    body = response.body if isinstance(response.body, bytes) else b""
    return idempotency.StoredAnswer(response.status, headers, body)


@web.middleware
async def idempotency_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Idempotency-Key for the POSTs of the API that leave it to the middleware (KeyHandling.REPLAYED)."""
    if request.method != "POST" or not request.path.startswith("/v1/"):
        return await handler(request)
    handling = handling_of(request.match_info.handler)
    if handling is KeyHandling.IN_USE_CASE:
        return await handler(request)
    key = key_from(request)
    if key is None:
        return await handler(request)
    if handling is KeyHandling.REFUSED:
        raise field_error(HEADER, "not accepted here: the answer holds a secret that is never stored", status=400)
    if OPERATOR in request:  # keys are kept per tenant, and the operator is none
        raise field_error(HEADER, "not accepted with the operator credential", status=400)
    engine, who = request.app[ENGINE], request[PRINCIPAL]
    body = await request.read()  # aiohttp keeps it for the handler
    outcome = await idempotency.reserve(
        engine, request.app[SETTINGS], who.tenant_id, key, idempotency.fingerprint("POST", request.path, body)
    )
    if isinstance(outcome, idempotency.StoredAnswer):
        return replayed(outcome)
    try:
        response = await handler(request)
    except BaseException:
        await idempotency.release(engine, outcome)
        raise
    if isinstance(response, web.Response) and 200 <= response.status < 300:
        await idempotency.complete(engine, outcome, answer_of(response))
    else:
        await idempotency.release(engine, outcome)  # an error is not an answer worth replaying: the key is free again
    return response
