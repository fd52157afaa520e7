"""Bearer API keys on every ``/v1`` route: who is calling, and may they do this."""

from __future__ import annotations

import uuid
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


async def authenticate(engine: AsyncEngine, settings: Settings, authorization: str | None) -> Principal:
    if not authorization:
        raise _unauthorized("send 'Authorization: Bearer <api key>'")
    scheme, _, value = authorization.partition(" ")
    parsed = tenants.parse_api_key(value.strip()) if scheme.lower() == "bearer" else None
    if parsed is None:
        raise _unauthorized("the API key is malformed (expected mpk_<id>_<secret>)")
    async with engine.connect() as conn:
        row = (await conn.execute(tenants.select_key(parsed.key_id))).mappings().first()
    if row is None or not tenants.secret_matches(parsed.secret, row["secret_hash"]):
        raise _unauthorized("the API key is not valid")
    now = datetime.now(UTC)
    if row["revoked_at"] is not None:
        raise _unauthorized("the API key was revoked")
    expires_at = row["expires_at"]
    if expires_at is not None and (expires_at if expires_at.tzinfo else expires_at.replace(tzinfo=UTC)) <= now:
        raise _unauthorized("the API key has expired")
    return Principal(
        tenant_id=row["tenant_id"],
        key_id=parsed.key_id,
        scopes=frozenset(row["scopes"]),
        quotas=TenantQuotas.from_row(row, settings),
    )


def principal(request: web.Request, scope: str) -> Principal:
    """The authenticated caller, provided it holds ``scope`` (or ``admin``)."""
    who: Principal = request[PRINCIPAL]
    if scope not in who.scopes and "admin" not in who.scopes:
        raise ApiProblem(403, "insufficient_scope", f"this API key lacks the '{scope}' scope")
    return who
