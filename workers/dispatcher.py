"""Fair dispatch: jobs wait in Postgres, and this feeds the broker round-robin by tenant.

The broker never holds more than ``dispatch_window`` unclaimed jobs, so a job a tenant submits
now is at most one window behind, however large another tenant's backlog is. Each round takes
the first job of every tenant that still has room under its running cap, then the second, and
so on (``row_number() OVER (PARTITION BY tenant)``), highest priority first within a tenant.

One dispatcher thread runs in every worker process; a Postgres advisory lock lets one of them
dispatch at a time. Rounds run when nudged (a new job, a finished job) and every
``dispatch_interval_s`` regardless, so a lost nudge only delays.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
from sqlalchemy import Integer, Select, and_, bindparam, case, func, or_, select, true, update

from db.models import Job, Tenant
from db.status import JobStatus
from medparse.events import dispatch_channel, dispatch_socket_path
from medparse.queue import SEGMENT_TASK
from workers.context import WorkerContext

log = logging.getLogger(__name__)

#: Arbitrary constant naming the "one dispatcher at a time" advisory lock.
DISPATCH_LOCK_KEY = 7_305_211_946
QUEUED = JobStatus.queued.value


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


def dispatch_round(ctx: WorkerContext) -> list[str] | None:
    """Publish the next fair batch. None when another dispatcher holds the lock right now."""
    settings = ctx.settings
    now = datetime.now(UTC)
    if ctx.engine.dialect.name == "postgresql":
        with ctx.engine.connect() as conn:
            autocommit = conn.execution_options(isolation_level="AUTOCOMMIT")
            params = {"window": settings.dispatch_window, "default_cap": settings.tenant_max_running_jobs, "now": now}
            rows = autocommit.execute(ROUND_PG, params).all()
        if not rows or not rows[0].ok:
            return None
        ids = [r.id for r in rows if r.id is not None]
    else:
        ids = _round_portable(ctx, now)
    published: list[str] = []
    for job_id in ids:
        try:
            ctx.app.send_task(SEGMENT_TASK, args=[str(job_id)], task_id=str(job_id))
            published.append(str(job_id))
        except Exception as exc:  # broker down: hand the job back to the next round
            log.warning("publishing job %s failed (%s)", job_id, type(exc).__name__)
            with ctx.engine.begin() as conn:
                conn.execute(update(Job).where(Job.id == job_id, Job.dispatched_at == now).values(dispatched_at=None))
    return published


def _round_portable(ctx: WorkerContext, now: datetime) -> list[uuid.UUID]:
    """The round for SQLite (the embedded default: one worker, so no lock): count, pick, mark."""
    settings = ctx.settings
    with ctx.engine.begin() as conn:
        free = settings.dispatch_window - int(conn.execute(IN_BROKER).scalar_one())
        if free <= 0:
            return []
        params = {"free": free, "default_cap": settings.tenant_max_running_jobs}
        ids: list[uuid.UUID] = list(conn.execute(FAIR_BATCH, params).scalars())
        if ids:
            conn.execute(MARK_DISPATCHED, {"ids": ids, "now": now})
    return ids


class Dispatcher:
    """The dispatch loop of one worker process, plus the listener that wakes it."""

    def __init__(self, get_context: Callable[[], WorkerContext]) -> None:
        self._get_context = get_context
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        ctx = self._get_context()
        self._threads = [
            threading.Thread(target=self._loop, name="dispatcher", daemon=True),
            threading.Thread(target=self._listen, args=(ctx,), name="dispatch-listener", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()

    def _loop(self) -> None:
        interval = self._get_context().settings.dispatch_interval_s
        while not self._stopped.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            try:
                if dispatch_round(self._get_context()) is None:
                    # Another process holds the lock and may have started before our nudge's job
                    # was committed: look again shortly rather than at the next interval.
                    self._stopped.wait(0.02)
                    self._wake.set()
            except Exception as exc:  # database away: the next round tries again
                log.warning("dispatch round failed: %s", type(exc).__name__)
                self._stopped.wait(1.0)

    def _listen(self, ctx: WorkerContext) -> None:
        if ctx.settings.redis_url is None:
            self._listen_socket(ctx)
        else:
            self._listen_redis(ctx)

    def _listen_redis(self, ctx: WorkerContext) -> None:
        assert ctx.settings.redis_url is not None
        while not self._stopped.is_set():
            try:
                # The client and its pub/sub connection close on every exit, also after an error.
                with redis.Redis.from_url(ctx.settings.redis_url) as client, client.pubsub(
                    ignore_subscribe_messages=True
                ) as pubsub:
                    pubsub.subscribe(dispatch_channel(ctx.settings))
                    while not self._stopped.is_set():
                        if pubsub.get_message(timeout=0.5) is not None:
                            self._wake.set()
            except redis.RedisError as exc:
                log.warning("dispatch listener lost redis (%s); retrying", type(exc).__name__)
                self._stopped.wait(1.0)

    def _listen_socket(self, ctx: WorkerContext) -> None:
        path = dispatch_socket_path(ctx.settings)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        try:
            sock.bind(str(path))
        except OSError as exc:  # another embedded worker listens already; periodic rounds still run
            log.info("dispatch socket unavailable (%s); relying on periodic rounds", exc)
            return
        sock.settimeout(0.5)
        with sock:
            while not self._stopped.is_set():
                with contextlib.suppress(TimeoutError):
                    sock.recv(64)
                    self._wake.set()
