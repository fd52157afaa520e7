"""Group commit for new jobs: submissions that arrive together share one transaction.

Under load most of a submission's database cost is per transaction and per statement, not per
row: BEGIN, the tenant scope, two INSERTs, COMMIT and SQLAlchemy's work around each. While one
batch's transaction is in flight, new submissions queue up; the next transaction takes them all
(up to ``submit_batch_max_jobs`` / ``submit_batch_max_bytes``) with one multi-row INSERT per
table and tenant. An idle gateway therefore writes every job alone, without waiting for company.

Every caller still gets its answer only after its own rows are committed. A batch that fails is
written again job by job, so one bad job (a tenant deleted meanwhile, say) fails alone.

What must hold in the job's own transaction (its Idempotency-Key claim, the queued-jobs quota) is
the job's ``admit``, run in the shared transaction before the rows are inserted. An admission that
refuses (a ``DomainError``: the key reused or in flight, the quota full) or answers instead (a
replayed answer) writes nothing, so the shared transaction goes on for the other jobs without a
savepoint (two round trips per job), and only that job is left out.

The submissions waiting for a transaction are bounded (``submit_queue_max_jobs`` / ``_bytes``):
when the database falls behind, a new one gets 503 ``submit_queue_full`` with Retry-After at
once instead of piling up its image in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from db import jobs as repo
from db.tenants import scope_to_tenant
from gateway.errors import Busy, DomainError
from medparse.settings import Settings

log = logging.getLogger(__name__)

#: Work that must commit with the job (its idempotency record, its webhook), run in the job's
#: tenant scope after the job's rows are inserted.
SameTransaction = Callable[[AsyncConnection], Awaitable[None]]
#: The checks that must hold in the job's transaction, run in its tenant scope before its rows are
#: inserted, given how many of the tenant's jobs this transaction admitted before it. Returns None to
#: go on, or an answer to give the caller instead of inserting the job (a replay); raises a
#: ``DomainError`` to refuse the job. Must write nothing unless it returns None.
Admission = Callable[[AsyncConnection, int], Awaitable[Any]]


@dataclass
class PendingJob:
    tenant_id: uuid.UUID
    job_params: dict[str, Any]
    input_params: dict[str, Any]
    in_same_transaction: SameTransaction | None = None
    admit: Admission | None = None
    #: called once the job's rows are committed, before any other job is settled (a gauge's count)
    after_commit: Callable[[], None] | None = None
    done: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    #: what the last transaction's admission decided instead of inserting (settled after its commit)
    answer: Any = None
    refusal: DomainError | None = None

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
        self._unsettled: Counter[uuid.UUID] = Counter()

    def unsettled(self, tenant_id: uuid.UUID) -> int:
        """The tenant's jobs written but not settled yet: waiting, or in a transaction."""
        return self._unsettled[tenant_id]

    async def write(self, job: PendingJob) -> Any:
        """Return once ``job`` is committed (None), or the answer its admission gave instead; raise
        what its admission or its transaction raised. ``Busy`` (503) at once if too many jobs or bytes
        already wait for a transaction (the database is not keeping up)."""
        size = job.size
        if self._pending and (
            len(self._pending) >= self._max_waiting_jobs or self._pending_bytes + size > self._max_waiting_bytes
        ):
            raise Busy(
                "too many submissions are waiting to be written on this gateway process; retry shortly",
                code="submit_queue_full", retry_after="1",
            )
        self._pending.append(job)
        self._pending_bytes += size
        self._unsettled[job.tenant_id] += 1
        job.done.add_done_callback(lambda _: self._settled(job.tenant_id))
        if self._in_flight < self._max_in_flight:
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # Shielded: a caller that goes away must not cancel a write other callers share. Its
        # cancellation waits for the write's outcome, so a cancelled request ends only after its
        # job's transaction did (a retry then finds the job and its Idempotency-Key record, or neither).
        try:
            return await asyncio.shield(job.done)
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
            for tenant_id, tenant_jobs in sorted(by_tenant.items()):
                # Row-level security checks every row against the scope set here (db/tenants.py).
                await scope_to_tenant(conn, tenant_id)
                jobs = await _admitted(conn, tenant_jobs)
                if not jobs:
                    continue
                if len(jobs) == 1:  # a lone job (an idle gateway): a plain execute is cheaper than executemany
                    await conn.execute(repo.INSERT_JOB, jobs[0].job_params)
                    await conn.execute(repo.INSERT_JOB_INPUT, jobs[0].input_params)
                else:
                    await conn.execute(repo.INSERT_JOB, [job.job_params for job in jobs])
                    await conn.execute(repo.INSERT_JOB_INPUT, [job.input_params for job in jobs])
                for job in jobs:
                    if job.in_same_transaction is not None:
                        await job.in_same_transaction(conn)

    def _settled(self, tenant_id: uuid.UUID) -> None:
        self._unsettled[tenant_id] -= 1
        if self._unsettled[tenant_id] <= 0:
            del self._unsettled[tenant_id]

    async def close(self) -> None:
        """Wait for the writes already taken (on shutdown, before the engine is disposed)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


async def _admitted(conn: AsyncConnection, jobs: list[PendingJob]) -> list[PendingJob]:
    """The jobs of one tenant that their admissions let in, in this transaction (decided anew by each)."""
    admitted: list[PendingJob] = []
    for job in jobs:
        job.answer, job.refusal = None, None
        if job.admit is not None:
            try:
                job.answer = await job.admit(conn, len(admitted))
            except DomainError as refusal:
                job.refusal = refusal
                continue
            if job.answer is not None:
                continue
        admitted.append(job)
    return admitted


def _settle(job: PendingJob, exc: BaseException | None) -> None:
    """After the transaction: its error, else the job's refusal, else the job's answer (None: inserted)."""
    if job.done.done():
        return
    failure = exc if exc is not None else job.refusal
    if failure is not None:
        job.done.set_exception(failure)
        return
    if job.answer is None and job.after_commit is not None:
        job.after_commit()
    job.done.set_result(job.answer)
