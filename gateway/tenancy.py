"""Per-tenant context for the gateway: quotas, and database connections scoped to one tenant.

Every query of the repository carries its tenant filter. On PostgreSQL the tenant tables also
have row-level security keyed on ``medparse.tenant_id``, which ``tenant_transaction`` sets for
the transaction only (``set_config(..., true)``), so a pooled connection never leaks it. The
gateway logs in as a member of ``medparse_app``, to which no other setting shows another tenant's
rows; only the workers' role (``medparse_system``) sees across tenants (migration 0007).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from db import tenants
from db.tenants import scope_to_tenant
from gateway.errors import QuotaExceeded
from medparse.settings import Settings


@dataclass(frozen=True)
class TenantQuotas:
    rate_limit_rps: float
    rate_limit_burst: float
    max_queued_jobs: int
    max_running_jobs: int
    max_image_bytes: int
    #: 0: no limit
    max_stored_bytes: int = 0

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
            max_stored_bytes=_pick(row.get("max_stored_bytes"), settings.tenant_max_stored_bytes),
        )


def _pick(override: int | None, default: int) -> int:
    return default if override is None else int(override)


class TenantGauge:
    """Each tenant's count of something, counted in Postgres at most every ``max_age_s``.

    ``count(*)`` of a tenant's queued jobs walks every one of them, so on the submit path it costs
    a round trip and grows with the backlog. Far from the quota an estimate (the last count plus the
    submissions since) is enough; from ``exact_above`` of the quota on, every submission counts.
    """

    def __init__(self, max_age_s: float = 1.0, exact_above: float = 0.9) -> None:
        self._max_age_s = max_age_s
        self._exact_above = exact_above
        self._counts: dict[uuid.UUID, tuple[int, float]] = {}

    def estimate(self, tenant_id: uuid.UUID, quota: int, pending: int = 0) -> int | None:
        """A count good enough for ``quota``, or None: count now. ``pending``: more that will be added
        (submissions on their way to a commit) and count toward the quota already."""
        entry = self._counts.get(tenant_id)
        if entry is None or time.monotonic() - entry[1] > self._max_age_s:
            return None
        if entry[0] + pending >= quota * self._exact_above:
            return None
        return entry[0] + pending

    def counted(self, tenant_id: uuid.UUID, queued: int) -> None:
        self._counts[tenant_id] = (queued, time.monotonic())

    def added(self, tenant_id: uuid.UUID, amount: int = 1) -> None:
        entry = self._counts.get(tenant_id)
        if entry is not None:
            self._counts[tenant_id] = (entry[0] + amount, entry[1])


class StoredBytesGauge(TenantGauge):
    """Each tenant's stored bytes (``tenant_usage``), read at most every ``max_age_s`` and on every
    submission from ``exact_above`` of the quota on; submissions since the read are added."""


class QueuedJobsGauge(TenantGauge):
    """Each tenant's queued jobs; with it travels (to every submission) its stored-bytes gauge."""

    def __init__(self, max_age_s: float = 1.0, exact_above: float = 0.9) -> None:
        super().__init__(max_age_s, exact_above)
        self.stored_bytes = StoredBytesGauge(max_age_s, exact_above)


async def check_storage_quota(
    engine: AsyncEngine, tenant_id: uuid.UUID, quota: int, size: int, gauge: StoredBytesGauge
) -> None:
    """``QuotaExceeded`` (429 ``storage_quota_exceeded``) when storing ``size`` more bytes would take the tenant over
    ``quota`` (0: none). Soft like the queued-jobs quota: submissions in flight at once may overshoot
    by their own size. 429, not 413: the request is not too large in itself, the tenant's store is
    full, and it clears when the tenant deletes jobs or retention purges them (as the queued-jobs
    quota clears when jobs start)."""
    if quota <= 0:
        return
    stored = gauge.estimate(tenant_id, max(1, quota - size))  # exact when this submission comes close
    if stored is None:
        async with tenant_transaction(engine, tenant_id) as conn:
            stored = await tenants.stored_bytes(conn, tenant_id)
        gauge.counted(tenant_id, stored)
    if stored + size > quota:
        raise QuotaExceeded(
            f"this tenant stores {stored} bytes; {size} more would exceed its limit of {quota} bytes."
            " Delete finished jobs (DELETE /v1/jobs/{id}) or wait for the retention purge",
            code="storage_quota_exceeded", retry_after="60",
        )
    gauge.added(tenant_id, size)


@asynccontextmanager
async def tenant_transaction(engine: AsyncEngine, tenant_id: uuid.UUID) -> AsyncIterator[AsyncConnection]:
    """One transaction (committed on success) in which only ``tenant_id``'s rows are visible."""
    async with engine.begin() as conn:
        await scope_to_tenant(conn, tenant_id)
        yield conn
