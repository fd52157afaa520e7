"""The fair dispatch round: which queued jobs go to the broker next, marked dispatched.

The broker never holds more than ``dispatch_window`` unclaimed jobs, so a job a tenant submits
now is at most one window behind, however large another tenant's backlog is. Each round takes
the first job of every tenant that still has room under its running cap, then the second, and
so on, highest priority first within a tenant.

``DispatchRound`` is the port; it has one implementation per database, chosen once from the
engine by ``make_dispatch_round``: PostgreSQL (many worker processes, an advisory lock, one
statement per round) and SQLite (the embedded default: one worker, count, pick and mark in one
transaction). Both mark with a compare-and-set UPDATE (still queued, still undispatched).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Engine, Integer, Select, and_, bindparam, case, func, or_, select, true, update

from db.models import Job, Tenant
from db.status import JobStatus

#: Arbitrary constant naming the "one dispatcher at a time" advisory lock.
DISPATCH_LOCK_KEY = 7_305_211_946
QUEUED = JobStatus.queued.value


class DispatchRound(Protocol):
    def mark_next_batch(self, *, window: int, default_cap: int, now: datetime) -> list[uuid.UUID] | None:
        """Mark the next fair batch dispatched at ``now`` and return its ids in fair order (turn,
        then age); None when another dispatcher holds the round right now."""
        ...

    def hand_back(self, job_id: uuid.UUID, *, dispatched_at: datetime) -> None:
        """Undo the mark of a job whose publish failed, so the next round takes it again."""
        ...


def in_broker_stmt() -> Select[Any]:
    return select(func.count()).select_from(Job).where(Job.status == QUEUED, Job.dispatched_at.is_not(None))


def _busy_per_tenant() -> Any:
    """Jobs of each tenant that hold a place: running, or published and waiting in the broker."""
    return (
        select(Job.tenant_id, func.count().label("n"))
        .where(or_(Job.status == JobStatus.running.value, and_(Job.status == QUEUED, Job.dispatched_at.is_not(None))))
        .group_by(Job.tenant_id)
        .cte("busy")
    )


def fair_batch_stmt_pg(free: Any) -> Select[Any]:
    """PostgreSQL form of ``fair_batch_stmt``: per tenant, read at most min(free, room) jobs off the
    partial index ``ix__jobs__undispatched`` (LATERAL ... LIMIT) instead of numbering the whole
    backlog, so a round costs ~2 ms with 55,000 jobs waiting rather than ~150 ms. ``free`` is the
    SQL expression of the places left in the window; the parameter ``default_cap`` is the running
    cap of a tenant without one. Columns: id, rn (the job's place in its tenant's turn), created_at."""
    busy = _busy_per_tenant()
    cap = func.coalesce(Tenant.max_running_jobs, bindparam("default_cap", type_=Integer))
    room = func.greatest(0, cap - func.coalesce(busy.c.n, 0))
    order = (Job.priority.desc(), Job.created_at, Job.id)
    head = (
        select(Job.id, Job.created_at, func.row_number().over(order_by=order).label("rn"))
        .where(Job.tenant_id == Tenant.id, Job.status == QUEUED, Job.dispatched_at.is_(None))
        .order_by(*order)
        .limit(func.least(free, room))
        .lateral("head")
    )
    return (
        select(head.c.id, head.c.rn, head.c.created_at)
        .select_from(Tenant)
        .outerjoin(busy, busy.c.tenant_id == Tenant.id)
        .join(head, true())
        .order_by(head.c.rn, head.c.created_at)
        .limit(free)
    )


def round_stmt_pg() -> Select[Any]:
    """A whole PostgreSQL dispatch round as one statement, run outside a transaction block so that
    it is its own transaction: one round trip instead of five (BEGIN, lock, batch, mark, COMMIT).

    The advisory lock is taken first (a MATERIALIZED CTE everything else reads); without it the
    window has no free place and nothing is marked. Parameters: ``window``, ``default_cap``, ``now``.
    Rows: ``ok`` (the lock was ours) and, per job marked in fair order (turn, then age), ``id``
    (at least one row: ``id`` NULL when nothing was marked). No WAL flush wait at commit: a dispatched_at
    lost in a Postgres crash only means the sweeper hands the job back, and a second delivery is
    harmless (the claim is a compare-and-set). The statement's snapshot may predate a round that
    committed just before the lock was taken: the window can then overshoot by one batch, once.
    """
    locked = (
        select(
            func.pg_try_advisory_xact_lock(DISPATCH_LOCK_KEY).label("ok"),
            func.set_config("synchronous_commit", "off", True).label("sync"),
        )
        .cte("locked")
        .prefix_with("MATERIALIZED")
    )
    places = func.greatest(0, bindparam("window", type_=Integer) - IN_BROKER.scalar_subquery())
    free_cte = (
        select(case((select(locked.c.ok).scalar_subquery(), places), else_=0).label("n"))
        .cte("free")
        .prefix_with("MATERIALIZED")
    )
    batch = fair_batch_stmt_pg(select(free_cte.c.n).scalar_subquery()).cte("batch")
    marked = (
        update(Job)
        .where(Job.id == batch.c.id, Job.status == QUEUED, Job.dispatched_at.is_(None))
        .values(dispatched_at=bindparam("now"))
        .returning(Job.id, batch.c.rn, batch.c.created_at)
        .cte("marked")
    )
    # UPDATE ... RETURNING keeps no order: the batch's order is applied to what it returns.
    return (
        select(locked.c.ok, marked.c.id)
        .select_from(locked.outerjoin(marked, true()))
        .order_by(marked.c.rn, marked.c.created_at)
    )


def fair_batch_stmt() -> Select[Any]:
    """Up to ``free`` undispatched job ids, round-robin across tenants within their caps (portable:
    the embedded default's SQLite has no LATERAL). Parameters: ``free``, ``default_cap``."""
    busy = _busy_per_tenant()
    ranked = (
        select(
            Job.id,
            Job.tenant_id,
            Job.created_at,
            func.row_number()
            .over(partition_by=Job.tenant_id, order_by=(Job.priority.desc(), Job.created_at, Job.id))
            .label("rn"),
        )
        .where(Job.status == QUEUED, Job.dispatched_at.is_(None))
        .cte("ranked")
    )
    cap = func.coalesce(Tenant.max_running_jobs, bindparam("default_cap", type_=Integer))
    return (
        select(ranked.c.id)
        .select_from(
            ranked.join(Tenant, Tenant.id == ranked.c.tenant_id).outerjoin(busy, busy.c.tenant_id == ranked.c.tenant_id)
        )
        .where(ranked.c.rn + func.coalesce(busy.c.n, 0) <= cap)
        .order_by(ranked.c.rn, ranked.c.created_at)
        .limit(bindparam("free", type_=Integer))
    )


#: Built once: building these selects (and their cache keys) cost more than running them.
IN_BROKER = in_broker_stmt()
ROUND_PG = round_stmt_pg()
FAIR_BATCH = fair_batch_stmt()
MARK_DISPATCHED = (
    update(Job)
    .where(Job.id.in_(bindparam("ids", expanding=True)), Job.status == QUEUED, Job.dispatched_at.is_(None))
    .values(dispatched_at=bindparam("now"))
)
HAND_BACK = (
    update(Job)
    .where(Job.id == bindparam("job_id"), Job.dispatched_at == bindparam("marked_at"))
    .values(dispatched_at=None)
)


class _EngineRound:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def hand_back(self, job_id: uuid.UUID, *, dispatched_at: datetime) -> None:
        with self._engine.begin() as conn:
            conn.execute(HAND_BACK, {"job_id": job_id, "marked_at": dispatched_at})


class PostgresDispatchRound(_EngineRound):
    """Several worker processes dispatch; an advisory lock lets one of them run a round at a time."""

    def mark_next_batch(self, *, window: int, default_cap: int, now: datetime) -> list[uuid.UUID] | None:
        with self._engine.connect() as conn:
            autocommit = conn.execution_options(isolation_level="AUTOCOMMIT")
            rows = autocommit.execute(ROUND_PG, {"window": window, "default_cap": default_cap, "now": now}).all()
        if not rows or not rows[0].ok:
            return None
        return [r.id for r in rows if r.id is not None]


class SqliteDispatchRound(_EngineRound):
    """The embedded default: one worker, so no lock; count, pick and mark in one transaction."""

    def mark_next_batch(self, *, window: int, default_cap: int, now: datetime) -> list[uuid.UUID] | None:
        with self._engine.begin() as conn:
            free = window - int(conn.execute(IN_BROKER).scalar_one())
            if free <= 0:
                return []
            ids: list[uuid.UUID] = list(conn.execute(FAIR_BATCH, {"free": free, "default_cap": default_cap}).scalars())
            if ids:
                conn.execute(MARK_DISPATCHED, {"ids": ids, "now": now})
        return ids


def make_dispatch_round(engine: Engine) -> DispatchRound:
    """The round for the engine's database, chosen once when the worker's context is built."""
    if engine.dialect.name == "postgresql":
        return PostgresDispatchRound(engine)
    return SqliteDispatchRound(engine)
