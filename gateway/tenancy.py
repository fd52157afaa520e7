"""Per-tenant context for the gateway: quotas, and database connections scoped to one tenant.

Every query of the repository carries its tenant filter. On PostgreSQL the tenant tables also
have row-level security keyed on ``medparse.tenant_id``, which ``tenant_transaction`` sets for
the transaction only (``set_config(..., true)``), so a pooled connection never leaks it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import RowMapping, bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from db import jobs
from gateway.problems import not_found
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


class QueuedJobsGauge:
    """Each tenant's count of queued jobs, counted in Postgres at most every ``max_age_s``.

    ``count(*)`` of a tenant's queued jobs walks every one of them, so on the submit path it costs
    a round trip and grows with the backlog. Far from the quota an estimate (the last count plus the
    submissions since) is enough; from ``exact_above`` of the quota on, every submission counts.
    """

    def __init__(self, max_age_s: float = 1.0, exact_above: float = 0.9) -> None:
        self._max_age_s = max_age_s
        self._exact_above = exact_above
        self._counts: dict[uuid.UUID, tuple[int, float]] = {}

    def estimate(self, tenant_id: uuid.UUID, quota: int) -> int | None:
        """A count good enough for ``quota``, or None: count now."""
        entry = self._counts.get(tenant_id)
        if entry is None or time.monotonic() - entry[1] > self._max_age_s or entry[0] >= quota * self._exact_above:
            return None
        return entry[0]

    def counted(self, tenant_id: uuid.UUID, queued: int) -> None:
        self._counts[tenant_id] = (queued, time.monotonic())

    def added(self, tenant_id: uuid.UUID) -> None:
        entry = self._counts.get(tenant_id)
        if entry is not None:
            self._counts[tenant_id] = (entry[0] + 1, entry[1])


#: Built once: constructing the select per transaction cost more CPU than running it.
_SET_TENANT = select(func.set_config("medparse.tenant_id", bindparam("tenant_id"), True))


async def scope_to_tenant(conn: AsyncConnection, tenant_id: uuid.UUID) -> None:
    if conn.dialect.name == "postgresql":
        await conn.execute(_SET_TENANT, {"tenant_id": str(tenant_id)})


async def job_row(conn: AsyncConnection, tenant_id: uuid.UUID, job_id: uuid.UUID) -> RowMapping:
    """The tenant's job row; 404 when there is none (or it is another tenant's)."""
    row = (await conn.execute(jobs.SELECT_JOB, {"job_id": job_id, "tenant_id": tenant_id})).mappings().first()
    if row is None:
        raise not_found()
    return row


@asynccontextmanager
async def tenant_transaction(engine: AsyncEngine, tenant_id: uuid.UUID) -> AsyncIterator[AsyncConnection]:
    """One transaction (committed on success) in which only ``tenant_id``'s rows are visible."""
    async with engine.begin() as conn:
        await scope_to_tenant(conn, tenant_id)
        yield conn
