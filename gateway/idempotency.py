"""``Idempotency-Key``, the one mechanism (IETF draft-ietf-httpapi-idempotency-key-header).

Same key + same request -> the first answer again; same key + another request -> 422
``idempotency_key_reused``; a retry while the first still holds the key -> 409
``idempotency_request_in_flight``; keys are kept ``idempotency_ttl_s`` and are scoped to the tenant.
The fingerprint is computed from what the request asks for (for a job: the image's digest, prompts
and options), not from raw bytes, so a client that rebuilds its multipart body with a new boundary
still matches.

A use case claims the key (``claim_in``) and stores its answer (``complete_in``) inside its own
transaction, so the answer commits with the effect or not at all: submit does (gateway/jobs/services.py,
in the group commit's transaction). The other POSTs go through ``idempotency_middleware``
(gateway/http/idempotency.py), which claims in a transaction of its own before the handler and
stores the answer after it (``reserve``, ``complete``, ``release``). No aiohttp here.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from db import idempotency as repo
from gateway.errors import Conflict, Unprocessable
from gateway.tenancy import tenant_transaction
from medparse.settings import Settings

#: Claims of a key per request: the row that blocked our INSERT can be released (deleted) before we
#: read it, and then the next INSERT may win; beyond this many rounds the key is busy (409).
_RESERVE_ROUNDS = 3
#: The headers of an answer that are stored and replayed with it.
STORED_HEADERS = ("Location", "Content-Type")


@dataclass(frozen=True)
class StoredAnswer:
    """The first request's answer, as stored for replay."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Reservation:
    tenant_id: uuid.UUID
    key: str


def fingerprint(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def key_reused() -> Unprocessable:
    return Unprocessable(
        "this Idempotency-Key was used with a different request; use a new key", code="idempotency_key_reused"
    )


def in_flight() -> Conflict:
    return Conflict(
        "a request with this Idempotency-Key is still being processed; retry shortly",
        code="idempotency_request_in_flight", retry_after="1",
    )


async def claim_in(
    conn: AsyncConnection, settings: Settings, tenant_id: uuid.UUID, key: str, request_fingerprint: str
) -> Reservation | StoredAnswer:
    """Claim ``key`` for this request in the caller's transaction (scoped to ``tenant_id``), or return
    the first request's stored answer; raises ``key_reused()`` or ``in_flight()``.

    A refusal or a replay writes nothing (the expired record it deletes aside), so the caller's
    transaction, which may carry other submissions, goes on unharmed."""
    now = datetime.now(UTC)
    lock = now + timedelta(seconds=settings.idempotency_in_flight_s)
    await conn.execute(
        repo.delete_expired_stmt(tenant_id, key, created_before=now - timedelta(seconds=settings.idempotency_ttl_s))
    )
    for _ in range(_RESERVE_ROUNDS):
        if await repo.claim(conn, tenant_id, key, request_fingerprint, now=now, locked_until=lock):
            return Reservation(tenant_id, key)
        # Each statement reads a fresh snapshot: the request that blocked our INSERT may have failed
        # and released the key since (concurrent retries of a bad request); then claim it again.
        row = await repo.read(conn, tenant_id, key)
        if row is None:
            continue
        if row["fingerprint"] != request_fingerprint:
            raise key_reused()
        if row["state"] == repo.DONE:
            return StoredAnswer(row["response_status"], row["response_headers"] or {}, row["response_body"] or b"")
        locked_until = row["locked_until"] if row["locked_until"].tzinfo else row["locked_until"].replace(tzinfo=UTC)
        if locked_until < now:  # abandoned: its request died
            taken = await conn.execute(
                repo.take_over_stmt(tenant_id, key, previous_lock=row["locked_until"], now=now, locked_until=lock)
            )
            if taken.rowcount == 1:
                return Reservation(tenant_id, key)
        break
    raise in_flight()


async def stored_answer(
    engine: AsyncEngine, tenant_id: uuid.UUID, key: str, request_fingerprint: str
) -> StoredAnswer | None:
    """The first request's answer if it is stored (or ``key_reused()``), read without claiming: lets a
    use case answer a retry before costly work; the claim in its transaction stays the decision."""
    async with tenant_transaction(engine, tenant_id) as conn:
        row = await repo.read(conn, tenant_id, key)
    if row is None:
        return None
    if row["fingerprint"] != request_fingerprint:
        raise key_reused()
    if row["state"] != repo.DONE:
        return None
    return StoredAnswer(row["response_status"], row["response_headers"] or {}, row["response_body"] or b"")


async def complete_in(
    conn: AsyncConnection, reservation: Reservation, answer: StoredAnswer, job_id: uuid.UUID | None = None
) -> None:
    """Store the answer inside the caller's transaction (the use case's own commit), which is
    scoped to the reservation's tenant already."""
    await conn.execute(
        repo.complete_stmt(
            reservation.tenant_id, reservation.key, status=answer.status, headers=answer.headers, body=answer.body,
            job_id=job_id,
        )
    )


async def reserve(
    engine: AsyncEngine, settings: Settings, tenant_id: uuid.UUID, key: str, request_fingerprint: str
) -> Reservation | StoredAnswer:
    """``claim_in`` in a transaction of its own (the middleware's path: the claim commits in flight)."""
    async with tenant_transaction(engine, tenant_id) as conn:
        return await claim_in(conn, settings, tenant_id, key, request_fingerprint)


async def complete(engine: AsyncEngine, reservation: Reservation, answer: StoredAnswer) -> None:
    async with tenant_transaction(engine, reservation.tenant_id) as conn:
        await complete_in(conn, reservation, answer)


async def release(engine: AsyncEngine, reservation: Reservation) -> None:
    """The request failed: forget the key so the client may retry with it."""
    async with tenant_transaction(engine, reservation.tenant_id) as conn:
        await conn.execute(repo.release_stmt(reservation.tenant_id, reservation.key))
