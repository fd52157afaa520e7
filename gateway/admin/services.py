"""Use cases of the admin API and of the ``medparse`` CLI: tenants, their quotas and API keys;
per-tenant usage; the operator's reads of the audit log.

Each takes a ``Store`` (the API passes its ``GatewayDeps``, the CLI one of its own) and domain
values, returns records of db/, and raises domain errors (gateway/errors.py). ``audit_actor``: the
caller records the action here, in the action's own transaction (the CLI, as ``cli``); the API
leaves it None because its audit middleware records every admin route (gateway/http/audit.py).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from db import audit
from db import tenants as repo
from db.audit import AuditEntry, AuditRecord
from db.tenants import KeyRecord, TenantRecord
from gateway.deps import Store
from gateway.errors import Conflict, Forbidden, KeyNotActive, NotFound, TenantNotFound
from gateway.tenancy import tenant_transaction


@dataclass(frozen=True)
class Grantor:
    """A tenant's own ``admin`` key minting a key (the operator and the CLI are not limited)."""

    scopes: frozenset[str]
    #: when the minting key expires (None: never); what it mints expires no later
    expires_at: datetime | None


@dataclass(frozen=True)
class NewKey:
    key: KeyRecord
    #: the whole key; shown once, only its hash is stored
    plaintext: str


@dataclass(frozen=True)
class Usage:
    """What a tenant used in [start, end), by job creation time."""

    tenant_id: uuid.UUID
    start: datetime
    end: datetime
    jobs: dict[str, int]
    images: int
    prompts: int
    endpoint_calls: int
    endpoint_seconds: float
    stored_bytes: int
    max_stored_bytes: int | None


async def _audit(
    conn: AsyncConnection, actor: str | None, action: str, *, tenant_id: uuid.UUID | None = None,
    target: str | None = None,
) -> None:
    if actor is not None:
        await audit.insert_entry(conn, AuditEntry(
            at=datetime.now(UTC), actor=actor, action=action, tenant_id=tenant_id, target=target,
        ))


async def list_tenants(store: Store) -> list[TenantRecord]:
    async with store.engine.connect() as conn:
        return await repo.fetch_tenants(conn)


async def tenant_named(store: Store, name: str) -> TenantRecord:
    """The tenant called ``name``; ``TenantNotFound`` (its detail names it) when there is none."""
    async with store.engine.connect() as conn:
        tenant_id = await repo.tenant_id_named(conn, name)
        tenant = None if tenant_id is None else await repo.fetch_tenant(conn, tenant_id)
    if tenant is None:
        raise TenantNotFound(name)
    return tenant


async def create_tenant(
    store: Store, name: str, quotas: dict[str, Any], *, audit_actor: str | None = None
) -> TenantRecord:
    """A new tenant named ``name`` with these quota overrides (column -> value)."""
    try:
        async with store.engine.begin() as conn:
            tenant = await repo.insert_tenant(conn, uuid.uuid4(), name, datetime.now(UTC), quotas)
            await _audit(conn, audit_actor, "tenant.create", tenant_id=tenant.id)
    except repo.TenantNameTaken:
        raise Conflict(f"a tenant named {name!r} exists already", code="tenant_exists") from None
    return tenant


async def onboard_tenant(
    store: Store, name: str, scopes: list[str], *, reuse: bool = False, audit_actor: str | None = None
) -> tuple[TenantRecord, NewKey]:
    """Tenant ``name`` (new, or the existing one with ``reuse``) and a new key of it, in ONE transaction:
    a failure leaves no tenant without its key. ``Conflict`` when it exists and ``reuse`` is not set."""
    now = datetime.now(UTC)
    try:
        async with store.engine.begin() as conn:
            tenant_id = await repo.tenant_id_named(conn, name)
            tenant = None if tenant_id is None else await repo.fetch_tenant(conn, tenant_id)
            if tenant is None:
                tenant = await repo.insert_tenant(conn, uuid.uuid4(), name, now, {})
                await _audit(conn, audit_actor, "tenant.create", tenant_id=tenant.id)
            elif not reuse:
                raise Conflict(f"tenant {name!r} already exists")
            key, plaintext = await repo.insert_key(conn, tenant.id, scopes, now, label=None, expires_at=None)
            await _audit(conn, audit_actor, "key.mint", tenant_id=tenant.id, target=f"key:{key.id}")
    except repo.TenantNameTaken:  # created by a concurrent call between our read and our insert
        raise Conflict(f"tenant {name!r} already exists") from None
    return tenant, NewKey(key, plaintext)


async def update_tenant(store: Store, tenant_id: uuid.UUID, quotas: dict[str, Any]) -> TenantRecord:
    """Set these quota overrides (None: back to the deployment default); the others are kept."""
    async with store.engine.begin() as conn:
        tenant = await repo.update_quotas(conn, tenant_id, quotas)
    if tenant is None:
        raise TenantNotFound()
    return tenant


async def require_tenant(store: Store, tenant_id: uuid.UUID) -> None:
    """``TenantNotFound`` unless the tenant exists (for routes the operator points at one)."""
    async with store.engine.connect() as conn:
        if await repo.fetch_tenant(conn, tenant_id) is None:
            raise TenantNotFound()


async def list_keys(store: Store, tenant_id: uuid.UUID | None) -> list[KeyRecord]:
    """The tenant's keys (never their secrets); None: every tenant's (the CLI)."""
    async with store.engine.connect() as conn:
        if tenant_id is not None and await repo.fetch_tenant(conn, tenant_id) is None:
            raise TenantNotFound()
        return await repo.fetch_keys(conn, tenant_id)


def _limit_to_grantor(
    grantor: Grantor, scopes: list[str], expires_at: datetime | None
) -> datetime | None:
    """The expiry a key minted by ``grantor`` gets; ``Forbidden`` when it would escalate."""
    if missing := sorted(set(scopes) - grantor.scopes):
        # No escalation: an admin key that may not read jobs cannot mint one that may.
        message = f"this API key may grant only the scopes it holds itself; it lacks {', '.join(missing)}"
        raise Forbidden(f"scopes: {message}", code="scope_not_held", fields=[{"field": "scopes", "message": message}])
    if grantor.expires_at is not None and (expires_at is None or expires_at > grantor.expires_at):
        # Nor outliving itself: a stolen short-lived admin key must not mint a key that never expires.
        return grantor.expires_at
    return expires_at


async def create_key(
    store: Store, tenant_id: uuid.UUID, scopes: list[str], *, label: str | None = None,
    expires_at: datetime | None = None, grantor: Grantor | None = None, audit_actor: str | None = None,
) -> NewKey:
    """A new key of the tenant with these scopes (stored as given: the API sorts them, once each)."""
    if grantor is not None:
        expires_at = _limit_to_grantor(grantor, scopes, expires_at)
    async with store.engine.begin() as conn:
        if await repo.fetch_tenant(conn, tenant_id) is None:
            raise TenantNotFound()
        key, plaintext = await repo.insert_key(
            conn, tenant_id, scopes, datetime.now(UTC), label=label, expires_at=expires_at
        )
        await _audit(conn, audit_actor, "key.mint", tenant_id=tenant_id, target=f"key:{key.id}")
    return NewKey(key, plaintext)


async def revoke_key(
    store: Store, key_id: str, *, tenant_id: uuid.UUID | None, only_active: bool = False,
    audit_actor: str | None = None,
) -> KeyRecord:
    """Revoke ``key_id`` at once; with ``tenant_id``, only if it is that tenant's (another's:
    ``NotFound``, untouched). Revoking a revoked key changes nothing and answers the key, unless
    ``only_active``: then it is ``KeyNotActive``, as a key that does not exist (the CLI)."""
    async with store.engine.begin() as conn:
        key, revoked = await repo.revoke_key(conn, key_id, datetime.now(UTC), tenant_id=tenant_id)
        if revoked:
            await _audit(conn, audit_actor, "key.revoke", target=f"key:{key_id}"[:200])
    if only_active and not revoked:
        raise KeyNotActive(key_id)
    if key is None:
        raise NotFound("key")
    return key


async def usage(store: Store, tenant_id: uuid.UUID, start: datetime, end: datetime) -> Usage:
    """What a tenant used in [start, end), by job creation time: for billing a lab's own users."""
    async with tenant_transaction(store.engine, tenant_id) as conn:
        by_status = await repo.usage_by_status(conn, tenant_id, start, end)
        stored = await repo.stored_bytes(conn, tenant_id)
        own_limit = await repo.own_max_stored_bytes(conn, tenant_id)
    max_stored_bytes = store.settings.tenant_max_stored_bytes if own_limit is None else own_limit
    return Usage(
        tenant_id=tenant_id,
        start=start,
        end=end,
        jobs={s.status: s.jobs for s in by_status},
        images=sum(s.jobs for s in by_status),
        prompts=sum(s.prompts for s in by_status),
        endpoint_calls=sum(s.endpoint_calls for s in by_status),
        endpoint_seconds=round(sum(s.endpoint_seconds for s in by_status), 3),
        stored_bytes=stored,
        max_stored_bytes=max_stored_bytes or None,
    )


async def audit_entries(
    store: Store, *, tenant_id: uuid.UUID | None, job_id: uuid.UUID | None = None,
    since: datetime | None = None, action: str | None = None, limit: int = 100,
) -> list[AuditRecord]:
    """Audit entries, newest first. With ``tenant_id``, read under that tenant's row-level scope
    (the operator over HTTP); None reads every tenant's, which only the system role may (the CLI)."""
    filters: dict[str, Any] = {"job_id": job_id, "since": since, "action": action, "limit": limit}
    if tenant_id is None:
        async with store.engine.connect() as conn:
            return await audit.fetch_entries(conn, **filters)
    async with tenant_transaction(store.engine, tenant_id) as conn:
        return await audit.fetch_entries(conn, tenant_id=tenant_id, **filters)
