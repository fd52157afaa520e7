"""Who is calling, and may they do this: tenant API keys and the deployment's operator credential.

Two kinds of caller, kept apart:

- a **tenant's API key** (``mpk_<id>_<secret>``, issued by ``medparse key create`` or the admin API)
  acts only on its own tenant, and only with the scopes it holds: ``jobs:read`` (jobs, results,
  deliveries: PHI), ``jobs:write`` (submit, cancel, delete, webhooks), ``admin`` (its own tenant's
  keys and webhook endpoints). ``admin`` implies no other scope, so an admin key reads no PHI;
  and a key can mint only keys whose scopes it holds itself, so ``admin`` cannot escalate to them.
- the **operator** (``MEDPARSE_OPERATOR_TOKEN_SHA256``, or the CLI, which needs no HTTP at all)
  creates tenants, sets quotas and manages any tenant's keys: everything that crosses tenants. It
  reads no tenant's jobs (no PHI); it can mint a key that does, as the CLI can.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
import uuid
from collections import OrderedDict
from datetime import UTC, datetime

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from db import tenants
from gateway.errors import TenantNotFound
from gateway.http.problems import ApiProblem
from gateway.principals import Operator, Principal
from gateway.tenancy import TenantQuotas
from medparse.settings import Settings, secret_value

ADMIN = "admin"


PRINCIPAL = web.RequestKey("principal", Principal)
OPERATOR = web.RequestKey("operator", Operator)

#: An operator token is a long random string (``openssl rand -hex 32``); shorter ones are refused
#: before hashing, so a weak token configured by mistake cannot be guessed online.
MIN_OPERATOR_TOKEN_CHARS = 32
_TOKEN_CHARS = re.compile(rf"[\x21-\x7e]{{{MIN_OPERATOR_TOKEN_CHARS},512}}")


def _unauthorized(detail: str) -> ApiProblem:
    return ApiProblem(401, "unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="medparse"'})


def operator_token_digests(settings: Settings) -> list[str]:
    """The configured SHA-256 hex digests of operator tokens (several while one is rotated out)."""
    raw = secret_value(settings.operator_token_sha256) or ""
    return [d.strip().lower() for d in raw.split(",") if d.strip()]


def match_operator(settings: Settings, token: str) -> Operator | None:
    """The operator when ``token`` hashes to a configured digest. Every digest is compared, in
    constant time, so the answer's timing tells nothing about which or how much matched."""
    digests = operator_token_digests(settings)
    if not digests or not _TOKEN_CHARS.fullmatch(token):
        return None
    presented = hashlib.sha256(token.encode("ascii")).hexdigest()
    found = 0
    for n, digest in enumerate(digests, start=1):
        if hmac.compare_digest(presented, digest):
            found = n
    return Operator(credential=f"operator#{found}") if found else None


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
) -> Principal | Operator:
    if authorization and (cached := cache.get(authorization)) is not None:
        return cached
    if not authorization:
        raise _unauthorized("send 'Authorization: Bearer <api key>'")
    scheme, _, value = authorization.partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer":
        raise _unauthorized("the API key is malformed (expected mpk_<id>_<secret>)")
    if not value.startswith(tenants.KEY_PREFIX) and (operator := match_operator(settings, value)) is not None:
        return operator
    # Header bytes that are not UTF-8 reach us as surrogate escapes: such a value names no key.
    parsed = tenants.parse_api_key(value) if value.isascii() else None
    if parsed is None:
        raise _unauthorized("the API key is malformed (expected mpk_<id>_<secret>)")
    row = await tenants.find_key(engine, parsed.key_id)
    if row is None or not tenants.secret_matches(parsed.secret, row["secret_hash"]):
        raise _unauthorized("the API key is not valid")
    now = datetime.now(UTC)
    if row["revoked_at"] is not None:
        raise _unauthorized("the API key was revoked")
    expires_at = row["expires_at"]
    if expires_at is not None:
        if expires_at <= now:
            raise _unauthorized("the API key has expired")
    who = Principal(
        tenant_id=row["tenant_id"],
        key_id=parsed.key_id,
        scopes=frozenset(row["scopes"]),
        quotas=TenantQuotas.from_row(row, settings),
        expires_at=expires_at,
    )
    cache.put(authorization, who, expires_at)
    return who


def caller(request: web.Request) -> Principal | Operator:
    """Whoever authenticated this ``/v1`` request."""
    if (op := request.get(OPERATOR)) is not None:
        return op
    return request[PRINCIPAL]


def principal(request: web.Request, scope: str, *alternatives: str) -> Principal:
    """The calling tenant key, provided it holds ``scope`` (or one of ``alternatives``).

    No scope implies another: ``admin`` alone reads no jobs. The operator acts on no tenant's jobs.
    """
    if OPERATOR in request:
        raise ApiProblem(
            403, "tenant_key_required", "the operator credential acts on no tenant's data; use a tenant's API key"
        )
    who: Principal = request[PRINCIPAL]
    wanted = (scope, *alternatives)
    if who.scopes.isdisjoint(wanted):
        raise ApiProblem(
            403, "insufficient_scope", f"this API key lacks the {' or '.join(repr(s) for s in wanted)} scope"
        )
    return who


def operator(request: web.Request) -> Operator:
    """The operator, or 403 ``operator_required``: for whatever crosses tenants (tenants, quotas,
    any tenant's keys, the audit log). Reusable by any operator-only route."""
    op = request.get(OPERATOR)
    if op is None:
        raise ApiProblem(
            403, "operator_required",
            "only the operator may do this (the CLI, or the credential set by MEDPARSE_OPERATOR_TOKEN_SHA256)",
        )
    return op


def admin_of(request: web.Request, tenant_id: uuid.UUID) -> Principal | Operator:
    """The operator, or an ``admin`` key of ``tenant_id`` itself. Another tenant's admin gets the
    404 that a tenant which does not exist gets: it learns nothing about other tenants."""
    if (op := request.get(OPERATOR)) is not None:
        return op
    who = principal(request, ADMIN)
    if who.tenant_id != tenant_id:
        raise TenantNotFound()
    return who
