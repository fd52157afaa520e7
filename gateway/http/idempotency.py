"""``Idempotency-Key`` on POSTs (IETF draft-ietf-httpapi-idempotency-key-header).

Same key + same request -> the first response again (``Idempotent-Replayed: true``); same key +
another request -> 422; a retry while the first is still running -> 409; keys are kept
``idempotency_ttl_s`` and are scoped to the tenant. The fingerprint is computed from what the
request asks for (for a job: the image's digest, prompts and options), not from raw bytes, so a
client that rebuilds its multipart body with a new boundary still matches.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aiohttp import web
from aiohttp.typedefs import Handler
from sqlalchemy import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from db import idempotency as repo
from gateway.http.auth import OPERATOR, PRINCIPAL
from gateway.http.problems import ApiProblem, field_error
from gateway.http.tenancy import tenant_transaction
from gateway.keys import ENGINE, SETTINGS
from medparse.settings import Settings

HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 255
_ASCII_PRINTABLE = re.compile(r"[\x20-\x7e]+")
#: Claims of a key per request: the row that blocked our INSERT can be released (deleted) before we
#: read it, and then the next INSERT may win; beyond this many rounds the key is busy (409).
_RESERVE_ROUNDS = 3


@dataclass(frozen=True)
class StoredResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def to_response(self) -> web.Response:
        headers = {**self.headers, "Idempotent-Replayed": "true"}
        return web.Response(status=self.status, body=self.body, headers=headers)


@dataclass(frozen=True)
class Reservation:
    tenant_id: uuid.UUID
    key: str


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


def fingerprint(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


async def reserve(
    engine: AsyncEngine, settings: Settings, tenant_id: uuid.UUID, key: str, request_fingerprint: str
) -> Reservation | StoredResponse:
    """Claim ``key`` for this request, or return the first request's stored response."""
    now = datetime.now(UTC)
    lock = now + timedelta(seconds=settings.idempotency_in_flight_s)
    async with tenant_transaction(engine, tenant_id) as conn:
        await conn.execute(
            repo.delete_expired_stmt(tenant_id, key, created_before=now - timedelta(seconds=settings.idempotency_ttl_s))
        )
        row = await _claim(conn, tenant_id, key, request_fingerprint, now=now, locked_until=lock)
        if row is None:
            return Reservation(tenant_id, key)
        if row["fingerprint"] != request_fingerprint:
            raise ApiProblem(
                422, "idempotency_key_reused",
                "this Idempotency-Key was used with a different request; use a new key",
            )
        if row["state"] == repo.DONE:
            return StoredResponse(row["response_status"], row["response_headers"] or {}, row["response_body"] or b"")
        locked_until = row["locked_until"] if row["locked_until"].tzinfo else row["locked_until"].replace(tzinfo=UTC)
        if locked_until < now:
            taken = await conn.execute(
                repo.take_over_stmt(tenant_id, key, previous_lock=row["locked_until"], now=now, locked_until=lock)
            )
            if taken.rowcount == 1:
                return Reservation(tenant_id, key)
    raise _in_flight()


async def _claim(
    conn: AsyncConnection, tenant_id: uuid.UUID, key: str, request_fingerprint: str, *,
    now: datetime, locked_until: datetime,
) -> RowMapping | None:
    """None when this request now holds ``key``; else the row of the request that holds it."""
    for _ in range(_RESERVE_ROUNDS):
        claim = repo.reserve_stmt(
            conn.dialect.name, tenant_id, key, request_fingerprint, now=now, locked_until=locked_until
        )
        reserved = await conn.execute(claim)
        if reserved.first() is not None:
            return None
        # Each statement reads a fresh snapshot: the request that blocked our INSERT may have failed
        # and released the key since (concurrent retries of a bad request); then claim it again.
        row = (await conn.execute(repo.select_stmt(tenant_id, key))).mappings().first()
        if row is not None:
            return row
    raise _in_flight()


def _in_flight() -> ApiProblem:
    return ApiProblem(
        409, "idempotency_request_in_flight",
        "a request with this Idempotency-Key is still being processed; retry shortly",
        headers={"Retry-After": "1"},
    )


async def complete_in(
    conn: AsyncConnection, reservation: Reservation, response: web.Response, job_id: uuid.UUID | None = None
) -> None:
    """Store the response inside the caller's transaction (the use case's own commit), which is
    scoped to the reservation's tenant already."""
    headers = {k: v for k, v in response.headers.items() if k in ("Location", "Content-Type")}
    body = response.body if isinstance(response.body, bytes) else b""
    await conn.execute(
        repo.complete_stmt(
            reservation.tenant_id, reservation.key, status=response.status, headers=headers, body=body, job_id=job_id
        )
    )


async def complete(engine: AsyncEngine, reservation: Reservation, response: web.Response) -> None:
    async with tenant_transaction(engine, reservation.tenant_id) as conn:
        await complete_in(conn, reservation, response)


async def release(engine: AsyncEngine, reservation: Reservation) -> None:
    """The request failed: forget the key so the client may retry with it."""
    async with tenant_transaction(engine, reservation.tenant_id) as conn:
        await conn.execute(repo.release_stmt(reservation.tenant_id, reservation.key))


#: POST routes whose answer carries a secret (a new API key, a rotated webhook secret): storing it
#: for replay would keep the secret in the clear, so an Idempotency-Key is refused there instead.
NOT_REPLAYABLE_ROUTES = frozenset({"admin_create_key", "rotate_default_webhook_secret", "rotate_webhook_secret"})
#: Routes that handle the key inside their own transaction (the job and its record commit together).
SELF_MANAGED_ROUTES = frozenset({"create_job"})


@web.middleware
async def idempotency_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Idempotency-Key for every POST of the API: the first 2xx answer is stored and replayed."""
    route = request.match_info.route.name
    if request.method != "POST" or not request.path.startswith("/v1/") or route in SELF_MANAGED_ROUTES:
        return await handler(request)
    key = key_from(request)
    if key is None:
        return await handler(request)
    if route in NOT_REPLAYABLE_ROUTES:
        raise field_error(HEADER, "not accepted here: the answer holds a secret that is never stored", status=400)
    if OPERATOR in request:  # keys are kept per tenant, and the operator is none
        raise field_error(HEADER, "not accepted with the operator credential", status=400)
    engine, who = request.app[ENGINE], request[PRINCIPAL]
    body = await request.read()  # aiohttp keeps it for the handler
    outcome = await reserve(
        engine, request.app[SETTINGS], who.tenant_id, key, fingerprint("POST", request.path, body)
    )
    if isinstance(outcome, StoredResponse):
        return outcome.to_response()
    try:
        response = await handler(request)
    except BaseException:
        await release(engine, outcome)
        raise
    if isinstance(response, web.Response) and 200 <= response.status < 300:
        await complete(engine, outcome, response)
    else:
        await release(engine, outcome)  # an error is not an answer worth replaying: the key is free again
    return response
