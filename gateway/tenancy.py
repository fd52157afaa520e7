"""Per-tenant context for the gateway: quotas, and database connections scoped to one tenant.

Every query of the repository carries its tenant filter. On PostgreSQL the tenant tables also
have row-level security keyed on ``medparse.tenant_id``, which ``tenant_transaction`` sets for
the transaction only (``set_config(..., true)``), so a pooled connection never leaks it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from medparse.settings import Settings


@dataclass(frozen=True)
class TenantQuotas:
    rate_limit_rps: float
    rate_limit_burst: float
    max_queued_jobs: int
    max_running_jobs: int
    max_image_bytes: int

    @classmethod
    def from_row(cls, row: Any, settings: Settings) -> TenantQuotas:
        rps = row["rate_limit_rps"] if row["rate_limit_rps"] is not None else settings.tenant_rate_limit_rps
        # A tenant with its own rate keeps the default burst-to-rate ratio.
        burst = settings.tenant_rate_limit_burst * rps / settings.tenant_rate_limit_rps
        return cls(
            rate_limit_rps=rps,
            rate_limit_burst=max(1.0, burst),
            max_queued_jobs=_pick(row["max_queued_jobs"], settings.tenant_max_queued_jobs),
            max_running_jobs=_pick(row["max_running_jobs"], settings.tenant_max_running_jobs),
            max_image_bytes=_pick(
                row["max_image_bytes"], settings.tenant_max_image_bytes or settings.max_body_bytes
            ),
        )


def _pick(override: int | None, default: int) -> int:
    return default if override is None else int(override)


async def scope_to_tenant(conn: AsyncConnection, tenant_id: uuid.UUID) -> None:
    if conn.dialect.name == "postgresql":
        await conn.execute(select(func.set_config("medparse.tenant_id", str(tenant_id), True)))


@asynccontextmanager
async def tenant_transaction(engine: AsyncEngine, tenant_id: uuid.UUID) -> AsyncIterator[AsyncConnection]:
    """One transaction (committed on success) in which only ``tenant_id``'s rows are visible."""
    async with engine.begin() as conn:
        await scope_to_tenant(conn, tenant_id)
        yield conn
