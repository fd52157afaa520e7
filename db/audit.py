"""The audit log (``audit_log``, migration 0007): who read, deleted or changed which job, key or webhook.

Append-only: the application roles may INSERT but not UPDATE or DELETE, and the retention purge
never touches it. A row holds ids, an action name and a request id, never PHI (no prompts, image
bytes, header values, secrets).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import RowMapping, Select, bindparam, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from db.models import AuditLog

#: Built once (it runs on audited reads): parameters are the columns of ``AuditEntry.params()``.
#: ``inline``: no RETURNING of the new id, which would need the SELECT privilege the roles lack.
INSERT_ENTRY = insert(AuditLog).inline().values(
    {name: bindparam(name, type_=AuditLog.__table__.c[name].type) for name in (
        "at", "actor", "tenant_id", "key_id", "action", "job_id", "target", "request_id",
    )}
)


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    actor: str  # "key", "operator" or "cli"
    action: str
    tenant_id: uuid.UUID | None = None
    key_id: str | None = None
    job_id: uuid.UUID | None = None
    target: str | None = None
    request_id: str | None = None

    def params(self) -> dict[str, Any]:
        return {
            "at": self.at, "actor": self.actor, "tenant_id": self.tenant_id, "key_id": self.key_id,
            "action": self.action, "job_id": self.job_id, "target": self.target, "request_id": self.request_id,
        }


ENTRY_COLUMNS = (
    AuditLog.id, AuditLog.at, AuditLog.actor, AuditLog.tenant_id, AuditLog.key_id, AuditLog.action,
    AuditLog.job_id, AuditLog.target, AuditLog.request_id,
)


def select_entries(
    *, tenant_id: uuid.UUID | None = None, job_id: uuid.UUID | None = None, since: datetime | None = None,
    action: str | None = None, limit: int = 100,
) -> Select[Any]:
    """Newest first, filtered (each filter has an index: tenant+time, job, time)."""
    stmt = select(*ENTRY_COLUMNS)
    if tenant_id is not None:
        stmt = stmt.where(AuditLog.tenant_id == tenant_id)
    if job_id is not None:
        stmt = stmt.where(AuditLog.job_id == job_id)
    if since is not None:
        stmt = stmt.where(AuditLog.at >= since)
    if action is not None:
        stmt = stmt.where(AuditLog.action == action)
    return stmt.order_by(AuditLog.at.desc(), AuditLog.id.desc()).limit(limit)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """A stored entry: ``AuditEntry`` with its id, fields in ``ENTRY_COLUMNS`` order."""

    id: int
    at: datetime
    actor: str
    tenant_id: uuid.UUID | None
    key_id: str | None
    action: str
    job_id: uuid.UUID | None
    target: str | None
    request_id: str | None

    @classmethod
    def from_row(cls, row: RowMapping) -> AuditRecord:
        return cls(**{c.key: row[c.key] for c in ENTRY_COLUMNS})


async def insert_entry(conn: AsyncConnection, entry: AuditEntry) -> None:
    await conn.execute(INSERT_ENTRY, entry.params())


async def append_entry(engine: AsyncEngine, entry: AuditEntry) -> None:
    """``entry`` in a transaction of its own."""
    async with engine.connect() as conn:
        # One statement: autocommit spares the BEGIN and COMMIT round trips around it.
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(INSERT_ENTRY, entry.params())


async def fetch_entries(
    conn: AsyncConnection, *, tenant_id: uuid.UUID | None = None, job_id: uuid.UUID | None = None,
    since: datetime | None = None, action: str | None = None, limit: int = 100,
) -> list[AuditRecord]:
    stmt = select_entries(tenant_id=tenant_id, job_id=job_id, since=since, action=action, limit=limit)
    return [AuditRecord.from_row(r) for r in (await conn.execute(stmt)).mappings()]
