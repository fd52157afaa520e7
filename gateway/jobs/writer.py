"""Group commit for new jobs: submissions that arrive together share one transaction.

Under load most of a submission's database cost is per transaction and per statement, not per
row: BEGIN, the tenant scope, two INSERTs, COMMIT and SQLAlchemy's work around each. While one
batch's transaction is in flight, new submissions queue up; the next transaction takes them all
(up to ``submit_batch_max_jobs`` / ``submit_batch_max_bytes``) with one multi-row INSERT per
table and tenant. An idle gateway therefore writes every job alone, without waiting for company.

Every caller still gets its answer only after its own rows are committed. A batch that fails is
written again job by job, so one bad job (a tenant deleted meanwhile, say) fails alone.

The submissions waiting for a transaction are bounded (``submit_queue_max_jobs`` / ``_bytes``):
when the database falls behind, a new one gets 503 ``submit_queue_full`` with Retry-After at
once instead of piling up its image in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from db import jobs as repo
from gateway.http.problems import ApiProblem
from gateway.http.tenancy import scope_to_tenant
from medparse.settings import Settings

log = logging.getLogger(__name__)

#: Work that must commit with the job (its idempotency record, its webhook), run in the job's
#: tenant scope after the job's rows are inserted.
SameTransaction = Callable[[AsyncConnection], Awaitable[None]]


@dataclass
class PendingJob:
    tenant_id: uuid.UUID
    job_params: dict[str, Any]
    input_params: dict[str, Any]
    in_same_transaction: SameTransaction | None = None
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    @property
    def size(self) -> int:
        return len(self.input_params["data"])


class JobWriter:
    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self._engine = engine
        self._max_jobs = settings.submit_batch_max_jobs
        self._max_bytes = settings.submit_batch_max_bytes
        self._max_in_flight = settings.submit_batch_concurrency
        self._max_waiting_jobs = settings.submit_queue_max_jobs
        self._max_waiting_bytes = settings.submit_queue_max_bytes
        self._pending: deque[PendingJob] = deque()
        self._pending_bytes = 0
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def write(self, job: PendingJob) -> None:
        """Return once ``job`` is committed (or raise what its transaction raised); 503 at once if
        too many jobs or bytes already wait for a transaction (the database is not keeping up)."""
        size = job.size
        if self._pending and (
            len(self._pending) >= self._max_waiting_jobs or self._pending_bytes + size > self._max_waiting_bytes
        ):
            raise ApiProblem(
                503, "submit_queue_full",
                "too many submissions are waiting to be written on this gateway process; retry shortly",
                headers={"Retry-After": "1"},
            )
        self._pending.append(job)
        self._pending_bytes += size
        if self._in_flight < self._max_in_flight:
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # Shielded: a caller that goes away must not cancel a write other callers share. Its
        # cancellation waits for the write's outcome, so the caller's cleanup (releasing an
        # Idempotency-Key reservation, say) runs after the commit, never before it.
        try:
            await asyncio.shield(job.done)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(job.done)
            raise

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._take_batch()
                try:
                    await self._commit(batch)
                except Exception as exc:
                    if len(batch) == 1:
                        _settle(batch[0], exc)
                        continue
                    log.warning("a batch of %d new jobs failed (%s); writing them one by one", len(batch),
                                type(exc).__name__)
                    for job in batch:  # find the job that broke the batch; the others commit
                        try:
                            await self._commit([job])
                        except Exception as single_exc:
                            _settle(job, single_exc)
                        else:
                            _settle(job, None)
                else:
                    for job in batch:
                        _settle(job, None)
        finally:
            self._in_flight -= 1

    def _take_batch(self) -> list[PendingJob]:
        batch: list[PendingJob] = []
        size = 0
        while self._pending and len(batch) < self._max_jobs:
            job = self._pending[0]
            if batch and size + job.size > self._max_bytes:
                break
            batch.append(self._pending.popleft())
            size += job.size
        self._pending_bytes -= size
        return batch

    async def _commit(self, batch: list[PendingJob]) -> None:
        by_tenant: dict[uuid.UUID, list[PendingJob]] = defaultdict(list)
        for job in batch:
            by_tenant[job.tenant_id].append(job)
        async with self._engine.begin() as conn:
            # In tenant order: each tenant's INSERT locks its tenant_usage row (migration 0007) until the
            # commit, and two processes' batches taking the same tenants in opposite orders would deadlock.
            for tenant_id, jobs in sorted(by_tenant.items()):
                # Row-level security checks every row against the scope set here (gateway.http.tenancy).
                await scope_to_tenant(conn, tenant_id)
                if len(jobs) == 1:  # a lone job (an idle gateway): a plain execute is cheaper than executemany
                    await conn.execute(repo.INSERT_JOB, jobs[0].job_params)
                    await conn.execute(repo.INSERT_JOB_INPUT, jobs[0].input_params)
                else:
                    await conn.execute(repo.INSERT_JOB, [job.job_params for job in jobs])
                    await conn.execute(repo.INSERT_JOB_INPUT, [job.input_params for job in jobs])
                for job in jobs:
                    if job.in_same_transaction is not None:
                        await job.in_same_transaction(conn)

    async def close(self) -> None:
        """Wait for the writes already taken (on shutdown, before the engine is disposed)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _settle(job: PendingJob, exc: BaseException | None) -> None:
    if job.done.done():
        return
    if exc is None:
        job.done.set_result(None)
    else:
        job.done.set_exception(exc)
