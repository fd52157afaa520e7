"""Bearer API keys on every ``/v1`` route: who is calling, and may they do this."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from db import tenants
from gateway.problems import ApiProblem
from gateway.tenancy import TenantQuotas
from medparse.settings import Settings


@dataclass(frozen=True)
class Principal:
    tenant_id: uuid.UUID
    key_id: str
    scopes: frozenset[str]
    quotas: TenantQuotas


PRINCIPAL = web.RequestKey("principal", Principal)


def _unauthorized(detail: str) -> ApiProblem:
    return ApiProblem(401, "unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="medparse"'})


class AuthCache:
    """Keys verified in the last ``ttl_s`` seconds: one lookup per key and TTL instead of per request.

    Keyed by the whole Authorization value, so a wrong secret never matches an entry. Only successes
    are cached; a revoked key, a changed scope or quota takes effect at most ``ttl_s`` later.
    """

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self._max = max_entries
        self._entries: OrderedDict[str, tuple[Principal, float, datetime | None]] = OrderedDict()

    def get(self, authorization: str) -> Principal | None:
        entry = self._entries.get(authorization)
        if entry is None:
            return None
        who, until, expires_at = entry
        if time.monotonic() >= until or (expires_at is not None and expires_at <= datetime.now(UTC)):
            del self._entries[authorization]
            return None
        return who

    def put(self, authorization: str, who: Principal, expires_at: datetime | None) -> None:
        if self.ttl_s <= 0:
            return
        self._entries[authorization] = (who, time.monotonic() + self.ttl_s, expires_at)
        self._entries.move_to_end(authorization)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)


async def authenticate(
    engine: AsyncEngine, settings: Settings, authorization: str | None, cache: AuthCache
) -> Principal:
    if authorization and (cached := cache.get(authorization)) is not None:
        return cached
    if not authorization:
        raise _unauthorized("send 'Authorization: Bearer <api key>'")
    scheme, _, value = authorization.partition(" ")
    parsed = tenants.parse_api_key(value.strip()) if scheme.lower() == "bearer" else None
    if parsed is None:
        raise _unauthorized("the API key is malformed (expected mpk_<id>_<secret>)")
    async with engine.connect() as conn:
        # One read: autocommit spares the BEGIN and ROLLBACK round trips around it.
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        row = (await conn.execute(tenants.SELECT_KEY, {"key_id": parsed.key_id})).mappings().first()
    if row is None or not tenants.secret_matches(parsed.secret, row["secret_hash"]):
        raise _unauthorized("the API key is not valid")
    now = datetime.now(UTC)
    if row["revoked_at"] is not None:
        raise _unauthorized("the API key was revoked")
    expires_at = row["expires_at"]
    if expires_at is not None:
        expires_at = expires_at if expires_at.tzinfo else expires_at.replace(tzinfo=UTC)
        if expires_at <= now:
            raise _unauthorized("the API key has expired")
    who = Principal(
        tenant_id=row["tenant_id"],
        key_id=parsed.key_id,
        scopes=frozenset(row["scopes"]),
        quotas=TenantQuotas.from_row(row, settings),
    )
    cache.put(authorization, who, expires_at)
    return who


def principal(request: web.Request, scope: str) -> Principal:
    """The authenticated caller, provided it holds ``scope`` (or ``admin``)."""
    who: Principal = request[PRINCIPAL]
    if scope not in who.scopes and "admin" not in who.scopes:
        raise ApiProblem(403, "insufficient_scope", f"this API key lacks the '{scope}' scope")
    return who
