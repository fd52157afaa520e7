"""Use cases of the admin API: tenants, their quotas and API keys; and per-tenant usage."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from db import tenants as repo
from db.models import ApiKey, Job
from gateway.admin.schemas import (
    KeyCreate,
    KeyCreatedPublic,
    KeyPublic,
    TenantCreate,
    TenantPublic,
    TenantQuotasPatch,
    UsagePublic,
)
from gateway.http.problems import ApiProblem, not_found
from gateway.http.tenancy import tenant_transaction
from gateway.jobs.services import as_utc


def _tenant(row: Any) -> TenantPublic:
    return TenantPublic.model_validate({**row, "created_at": as_utc(row["created_at"])})


def _key(row: Any) -> KeyPublic:
    return KeyPublic.model_validate(
        {**row, **{k: as_utc(row[k]) for k in ("created_at", "expires_at", "revoked_at")}}
    )


async def list_tenants(engine: AsyncEngine) -> list[TenantPublic]:
    async with engine.connect() as conn:
        return [_tenant(r) for r in (await conn.execute(repo.list_tenants_stmt())).mappings()]


async def create_tenant(engine: AsyncEngine, body: TenantCreate) -> TenantPublic:
    tenant_id = uuid.uuid4()
    quotas = body.model_dump(exclude={"name"}, exclude_none=True)
    try:
        async with engine.begin() as conn:
            await conn.execute(repo.insert_tenant_with_quotas_stmt(tenant_id, body.name, datetime.now(UTC), quotas))
            row = (await conn.execute(repo.select_tenant(tenant_id))).mappings().one()
    except IntegrityError:
        raise ApiProblem(409, "tenant_exists", f"a tenant named {body.name!r} exists already") from None
    return _tenant(row)


async def update_tenant(engine: AsyncEngine, tenant_id: uuid.UUID, patch: TenantQuotasPatch) -> TenantPublic:
    quotas = patch.model_dump(exclude_unset=True)
    async with engine.begin() as conn:
        if quotas:
            await conn.execute(repo.update_quotas_stmt(tenant_id, quotas))
        row = (await conn.execute(repo.select_tenant(tenant_id))).mappings().first()
    if row is None:
        raise not_found("tenant")
    return _tenant(row)


async def require_tenant(engine: AsyncEngine, tenant_id: uuid.UUID) -> None:
    """404 ``tenant_not_found`` unless the tenant exists (for routes the operator points at one)."""
    async with engine.connect() as conn:
        if (await conn.execute(repo.select_tenant(tenant_id))).first() is None:
            raise not_found("tenant")


async def list_keys(engine: AsyncEngine, tenant_id: uuid.UUID) -> list[KeyPublic]:
    async with engine.connect() as conn:
        if (await conn.execute(repo.select_tenant(tenant_id))).first() is None:
            raise not_found("tenant")
        return [_key(r) for r in (await conn.execute(repo.list_keys_stmt(tenant_id))).mappings()]


async def create_key(engine: AsyncEngine, tenant_id: uuid.UUID, body: KeyCreate) -> KeyCreatedPublic:
    issued, secret_hash = repo.new_api_key()
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        if (await conn.execute(repo.select_tenant(tenant_id))).first() is None:
            raise not_found("tenant")
        await conn.execute(
            repo.insert_labeled_key_stmt(
                issued, secret_hash, tenant_id, sorted(set(body.scopes)), now,
                label=body.label, expires_at=body.expires_at,
            )
        )
        row = (await conn.execute(repo.select_key_public(issued.key_id))).mappings().one()
    return KeyCreatedPublic.model_validate({**_key(row).model_dump(), "key": issued.plaintext})


async def revoke_key(engine: AsyncEngine, key_id: str, *, tenant_id: uuid.UUID | None) -> KeyPublic:
    """Revoke ``key_id``; with ``tenant_id``, only if it is that tenant's (another's: 404, untouched)."""
    revoke, select_key = repo.revoke_key_stmt(key_id, datetime.now(UTC)), repo.select_key_public(key_id)
    if tenant_id is not None:
        owned = ApiKey.tenant_id == tenant_id
        revoke, select_key = revoke.where(owned), select_key.where(owned)
    async with engine.begin() as conn:
        await conn.execute(revoke)
        row = (await conn.execute(select_key)).mappings().first()
    if row is None:
        raise not_found("key")
    return _key(row)


async def usage(
    engine: AsyncEngine, tenant_id: uuid.UUID, start: datetime, end: datetime, default_max_stored_bytes: int = 0
) -> UsagePublic:
    """What a tenant used in [start, end), by job creation time: for billing a lab's own users."""
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
    async with tenant_transaction(engine, tenant_id) as conn:
        rows = (await conn.execute(stmt)).all()
        stored = (await conn.execute(repo.SELECT_STORED_BYTES, {"tenant_id": tenant_id})).scalar() or 0
        own_limit = (await conn.execute(repo.SELECT_MAX_STORED_BYTES, {"tenant_id": tenant_id})).scalar()
    max_stored_bytes = default_max_stored_bytes if own_limit is None else own_limit
    return UsagePublic(
        tenant_id=tenant_id,
        start=start,
        end=end,
        jobs={status: int(count) for status, count, *_ in rows},
        images=sum(int(r[1]) for r in rows),
        prompts=sum(int(r[2]) for r in rows),
        endpoint_calls=sum(int(r[3]) for r in rows),
        endpoint_seconds=round(sum(float(r[4]) for r in rows), 3),
        stored_bytes=int(stored),
        max_stored_bytes=max_stored_bytes or None,
    )
