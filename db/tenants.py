"""Tenants and API keys. Keys look like ``mpk_<public id>_<secret>``; only a hash of the secret is kept."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, String, bindparam, insert, select, update

from db.models import ApiKey, Tenant, TenantUsage

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
