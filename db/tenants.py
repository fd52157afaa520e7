"""Tenants and API keys. Keys look like ``mpk_<public id>_<secret>``; only a hash of the secret is kept.

The statements, and the queries the admin use cases run (gateway/admin/services.py), returning
``TenantRecord`` and ``KeyRecord``; ``scope_to_tenant``, which puts a transaction under one tenant's
row-level security; the tenant's stored bytes and usage.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import RowMapping, Select, String, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from db.models import ApiKey, Job, Tenant, TenantUsage

KEY_PREFIX = "mpk_"
DEFAULT_SCOPES = ["jobs:read", "jobs:write"]


@dataclass(frozen=True)
class IssuedKey:
    key_id: str
    plaintext: str


@dataclass(frozen=True)
class ParsedKey:
    key_id: str
    secret: str


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_api_key() -> tuple[IssuedKey, str]:
    """A fresh key and the hash to store. Hex keeps ``_`` as an unambiguous separator."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_hex(24)  # 192 bits
    return IssuedKey(key_id=key_id, plaintext=f"{KEY_PREFIX}{key_id}_{secret}"), hash_secret(secret)


def parse_api_key(value: str) -> ParsedKey | None:
    if not value.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = value[len(KEY_PREFIX):].partition("_")
    if not sep or not key_id or not secret or len(key_id) > 32 or len(secret) > 128:
        return None
    return ParsedKey(key_id=key_id, secret=secret)


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def insert_tenant_stmt(tenant_id: uuid.UUID, name: str, now: datetime) -> Any:
    return insert(Tenant).values(id=tenant_id, name=name, created_at=now)


def insert_key_stmt(
    issued: IssuedKey, secret_hash: str, tenant_id: uuid.UUID, scopes: list[str], now: datetime
) -> Any:
    return insert(ApiKey).values(
        id=issued.key_id, tenant_id=tenant_id, secret_hash=secret_hash, scopes=scopes, created_at=now
    )


#: The key with its tenant's quota overrides: one round trip per request. Built once, because
#: building (and cache-keying) a select costs more than running it.
SELECT_KEY = (
    select(
        ApiKey.tenant_id, ApiKey.secret_hash, ApiKey.scopes, ApiKey.expires_at, ApiKey.revoked_at,
        Tenant.rate_limit_rps, Tenant.max_queued_jobs, Tenant.max_running_jobs, Tenant.max_image_bytes,
        Tenant.max_stored_bytes,
    )
    .join(Tenant, Tenant.id == ApiKey.tenant_id)
    .where(ApiKey.id == bindparam("key_id", type_=String))
)


def select_tenant_by_name(name: str) -> Select[Any]:
    return select(Tenant.id).where(Tenant.name == name)


TENANT_COLUMNS = (
    Tenant.id, Tenant.name, Tenant.created_at, Tenant.rate_limit_rps, Tenant.max_queued_jobs,
    Tenant.max_running_jobs, Tenant.max_image_bytes, Tenant.max_stored_bytes,
)
KEY_COLUMNS = (
    ApiKey.id, ApiKey.tenant_id, ApiKey.label, ApiKey.scopes, ApiKey.created_at, ApiKey.expires_at,
    ApiKey.revoked_at,
)


def list_tenants_stmt() -> Select[Any]:
    return select(*TENANT_COLUMNS).order_by(Tenant.created_at, Tenant.id)


def select_tenant(tenant_id: uuid.UUID) -> Select[Any]:
    return select(*TENANT_COLUMNS).where(Tenant.id == tenant_id)


def insert_tenant_with_quotas_stmt(tenant_id: uuid.UUID, name: str, now: datetime, quotas: dict[str, Any]) -> Any:
    return insert(Tenant).values(id=tenant_id, name=name, created_at=now, **quotas)


def update_quotas_stmt(tenant_id: uuid.UUID, quotas: dict[str, Any]) -> Any:
    return update(Tenant).where(Tenant.id == tenant_id).values(**quotas)


def list_keys_stmt(tenant_id: uuid.UUID | None = None) -> Select[Any]:
    stmt = select(*KEY_COLUMNS).order_by(ApiKey.created_at, ApiKey.id)
    return stmt if tenant_id is None else stmt.where(ApiKey.tenant_id == tenant_id)


def select_key_public(key_id: str) -> Select[Any]:
    return select(*KEY_COLUMNS).where(ApiKey.id == key_id)


def insert_labeled_key_stmt(
    issued: IssuedKey, secret_hash: str, tenant_id: uuid.UUID, scopes: list[str], now: datetime,
    *, label: str | None, expires_at: datetime | None,
) -> Any:
    return insert(ApiKey).values(
        id=issued.key_id, tenant_id=tenant_id, secret_hash=secret_hash, scopes=scopes, created_at=now,
        label=label, expires_at=expires_at,
    )


def revoke_key_stmt(key_id: str, now: datetime) -> Any:
    """Revocation is immediate: every request looks its key up, nothing caches it."""
    return update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)).values(revoked_at=now)


#: A tenant's stored bytes (inputs + masks + medical outputs), kept by triggers (migration 0007).
#: Built once: it runs on the submit path whenever the gateway's estimate is stale.
SELECT_STORED_BYTES = select(TenantUsage.stored_bytes).where(
    TenantUsage.tenant_id == bindparam("tenant_id", type_=TenantUsage.tenant_id.type)
)
#: The tenant's own stored-bytes quota (NULL: the deployment default).
SELECT_MAX_STORED_BYTES = select(Tenant.max_stored_bytes).where(
    Tenant.id == bindparam("tenant_id", type_=Tenant.id.type)
)


@dataclass(frozen=True, slots=True)
class TenantRecord:
    """A ``tenants`` row: the tenant and its quota overrides (None: the deployment default)."""

    id: uuid.UUID
    name: str
    created_at: datetime
    rate_limit_rps: float | None
    max_queued_jobs: int | None
    max_running_jobs: int | None
    max_image_bytes: int | None
    max_stored_bytes: int | None

    @classmethod
    def from_row(cls, row: RowMapping) -> TenantRecord:
        return cls(**{c.key: row[c.key] for c in TENANT_COLUMNS})


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """An ``api_keys`` row without its secret hash."""

    id: str
    tenant_id: uuid.UUID
    label: str | None
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: RowMapping) -> KeyRecord:
        return cls(**{c.key: row[c.key] for c in KEY_COLUMNS})


@dataclass(frozen=True, slots=True)
class StatusUsage:
    """What a tenant's jobs of one status used (``usage_by_status``)."""

    status: str
    jobs: int
    prompts: int
    endpoint_calls: int
    endpoint_seconds: float


class TenantNameTaken(Exception):
    """``insert_tenant``: another tenant has that name (names are unique)."""


#: Built once: constructing the select per transaction cost more CPU than running it.
_SET_TENANT = select(func.set_config("medparse.tenant_id", bindparam("tenant_id"), True))


async def scope_to_tenant(conn: AsyncConnection, tenant_id: uuid.UUID) -> None:
    """Row-level security (PostgreSQL) shows this transaction only ``tenant_id``'s rows; SQLite, the
    embedded single-tenant-at-a-time store, has none, and every query carries its tenant filter."""
    if conn.dialect.name == "postgresql":
        await conn.execute(_SET_TENANT, {"tenant_id": str(tenant_id)})


async def fetch_tenants(conn: AsyncConnection) -> list[TenantRecord]:
    return [TenantRecord.from_row(r) for r in (await conn.execute(list_tenants_stmt())).mappings()]


async def fetch_tenant(conn: AsyncConnection, tenant_id: uuid.UUID) -> TenantRecord | None:
    row = (await conn.execute(select_tenant(tenant_id))).mappings().first()
    return None if row is None else TenantRecord.from_row(row)


async def tenant_id_named(conn: AsyncConnection, name: str) -> uuid.UUID | None:
    tenant_id: uuid.UUID | None = (await conn.execute(select_tenant_by_name(name))).scalar_one_or_none()
    return tenant_id


async def insert_tenant(
    conn: AsyncConnection, tenant_id: uuid.UUID, name: str, now: datetime, quotas: dict[str, Any]
) -> TenantRecord:
    """Raises ``TenantNameTaken`` (the transaction is then aborted)."""
    try:
        await conn.execute(insert_tenant_with_quotas_stmt(tenant_id, name, now, quotas))
    except IntegrityError:
        raise TenantNameTaken(name) from None
    return TenantRecord.from_row((await conn.execute(select_tenant(tenant_id))).mappings().one())


async def update_quotas(conn: AsyncConnection, tenant_id: uuid.UUID, quotas: dict[str, Any]) -> TenantRecord | None:
    if quotas:
        await conn.execute(update_quotas_stmt(tenant_id, quotas))
    return await fetch_tenant(conn, tenant_id)


async def fetch_keys(conn: AsyncConnection, tenant_id: uuid.UUID | None) -> list[KeyRecord]:
    """``tenant_id``'s keys; None: every tenant's."""
    return [KeyRecord.from_row(r) for r in (await conn.execute(list_keys_stmt(tenant_id))).mappings()]


async def insert_key(
    conn: AsyncConnection, tenant_id: uuid.UUID, scopes: list[str], now: datetime,
    *, label: str | None, expires_at: datetime | None,
) -> tuple[KeyRecord, str]:
    """A new key of ``tenant_id``; returns it and its plaintext (shown once, never stored)."""
    issued, secret_hash = new_api_key()
    await conn.execute(
        insert_labeled_key_stmt(issued, secret_hash, tenant_id, scopes, now, label=label, expires_at=expires_at)
    )
    row = (await conn.execute(select_key_public(issued.key_id))).mappings().one()
    return KeyRecord.from_row(row), issued.plaintext


async def revoke_key(
    conn: AsyncConnection, key_id: str, now: datetime, *, tenant_id: uuid.UUID | None
) -> tuple[KeyRecord | None, bool]:
    """Revoke ``key_id`` (with ``tenant_id``: only if it is that tenant's). Returns the key (None:
    no such key, or another tenant's) and whether this call revoked it (False: it was already)."""
    revoke, select_key = revoke_key_stmt(key_id, now), select_key_public(key_id)
    if tenant_id is not None:
        owned = ApiKey.tenant_id == tenant_id
        revoke, select_key = revoke.where(owned), select_key.where(owned)
    revoked = (await conn.execute(revoke)).rowcount > 0
    row = (await conn.execute(select_key)).mappings().first()
    return (None if row is None else KeyRecord.from_row(row)), revoked


async def find_key(engine: AsyncEngine, key_id: str) -> RowMapping | None:
    """The key with its tenant's quota overrides (``SELECT_KEY``), for authenticating a request."""
    async with engine.connect() as conn:
        # One read: autocommit spares the BEGIN and ROLLBACK round trips around it.
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        return (await conn.execute(SELECT_KEY, {"key_id": key_id})).mappings().first()


async def stored_bytes(conn: AsyncConnection, tenant_id: uuid.UUID) -> int:
    return int((await conn.execute(SELECT_STORED_BYTES, {"tenant_id": tenant_id})).scalar() or 0)


async def own_max_stored_bytes(conn: AsyncConnection, tenant_id: uuid.UUID) -> int | None:
    """The tenant's own stored-bytes quota; None: the deployment default."""
    limit = (await conn.execute(SELECT_MAX_STORED_BYTES, {"tenant_id": tenant_id})).scalar()
    return None if limit is None else int(limit)


async def usage_by_status(
    conn: AsyncConnection, tenant_id: uuid.UUID, start: datetime, end: datetime
) -> list[StatusUsage]:
    """The tenant's jobs created in [start, end), summed by status."""
    stmt = (
        select(
            Job.status,
            func.count(),
            func.coalesce(func.sum(Job.prompt_count), 0),
            func.coalesce(func.sum(Job.endpoint_calls), 0),
            func.coalesce(func.sum(Job.endpoint_seconds), 0.0),
        )
        .where(Job.tenant_id == tenant_id, Job.created_at >= start, Job.created_at < end)
        .group_by(Job.status)
    )
    return [
        StatusUsage(status, int(count), int(prompts), int(calls), float(seconds))
        for status, count, prompts, calls, seconds in (await conn.execute(stmt)).all()
    ]
