"""Statements over ``idempotency_keys`` (scoped by tenant; nothing here commits)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import RowMapping, Select, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from db.models import IdempotencyKey

IN_FLIGHT = "in_flight"
DONE = "done"


def reserve_stmt(
    dialect: str, tenant_id: uuid.UUID, key: str, fingerprint: str, *, now: datetime, locked_until: datetime
) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING key: a row back means this request owns the key."""
    insert_for = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return (
        insert_for(IdempotencyKey)
        .values(
            tenant_id=tenant_id, key=key, fingerprint=fingerprint, state=IN_FLIGHT, created_at=now,
            locked_until=locked_until,
        )
        .on_conflict_do_nothing()
        .returning(IdempotencyKey.key)
    )


async def claim(
    conn: AsyncConnection, tenant_id: uuid.UUID, key: str, fingerprint: str, *, now: datetime, locked_until: datetime
) -> bool:
    """Insert ``key`` as in flight unless it exists; True when this request now holds it.

    Writes nothing when the key is taken, so a refused request leaves its transaction as it found it
    (several submissions share one: gateway/jobs/writer.py). On PostgreSQL an INSERT that meets
    another transaction's uncommitted claim of the key waits for that transaction's end."""
    claimed = await conn.execute(
        reserve_stmt(conn.dialect.name, tenant_id, key, fingerprint, now=now, locked_until=locked_until)
    )
    return claimed.first() is not None


async def read(conn: AsyncConnection, tenant_id: uuid.UUID, key: str) -> RowMapping | None:
    return (await conn.execute(select_stmt(tenant_id, key))).mappings().first()


def select_stmt(tenant_id: uuid.UUID, key: str) -> Select[Any]:
    return select(IdempotencyKey).where(IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key)


def take_over_stmt(
    tenant_id: uuid.UUID, key: str, *, previous_lock: datetime, now: datetime, locked_until: datetime
) -> Any:
    """Take an abandoned in-flight record, compare-and-set on its lock so only one retry wins."""
    return (
        update(IdempotencyKey)
        .where(
            IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key,
            IdempotencyKey.state == IN_FLIGHT, IdempotencyKey.locked_until == previous_lock,
        )
        .values(locked_until=locked_until, created_at=now)
    )


def complete_stmt(
    tenant_id: uuid.UUID, key: str, *, status: int, headers: dict[str, str], body: bytes,
    job_id: uuid.UUID | None = None,
) -> Any:
    return (
        update(IdempotencyKey)
        .where(IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key, IdempotencyKey.state == IN_FLIGHT)
        .values(state=DONE, response_status=status, response_headers=headers, response_body=body, job_id=job_id)
    )


def release_stmt(tenant_id: uuid.UUID, key: str) -> Any:
    return delete(IdempotencyKey).where(
        IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key, IdempotencyKey.state == IN_FLIGHT
    )


def delete_expired_stmt(tenant_id: uuid.UUID, key: str, *, created_before: datetime) -> Any:
    return delete(IdempotencyKey).where(
        IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key,
        IdempotencyKey.created_at < created_before,
    )


def purge_expired_stmt(*, created_before: datetime) -> Any:
    return delete(IdempotencyKey).where(IdempotencyKey.created_at < created_before)
