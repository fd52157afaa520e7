"""Engine factories. Called from entry points only; nothing here runs at import time."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from medparse.settings import Settings, to_async_url


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the gateway read while a worker writes; foreign keys are off by default in SQLite;
    # busy_timeout makes concurrent writers wait instead of failing with "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def session_timeouts(settings: Settings) -> dict[str, str]:
    """Server settings bounding every statement and open transaction of a session (milliseconds;
    0 disables): a runaway query or a transaction left open cannot hold locks and a pooled
    connection for ever."""
    return {
        "statement_timeout": str(round(settings.db_statement_timeout_s * 1000)),
        "idle_in_transaction_session_timeout": str(round(settings.db_idle_in_transaction_timeout_s * 1000)),
    }


def _libpq_options(settings: Settings) -> str:
    return " ".join(f"-c {name}={value}" for name, value in session_timeouts(settings).items())


def make_async_engine(settings: Settings, *, system_scope: bool = False, **kwargs: Any) -> AsyncEngine:
    """``system_scope``: as for ``make_sync_engine`` (the CLI's administration; never the gateway)."""
    url = settings.async_database_url
    if system_scope and settings.system_database_url:
        url = to_async_url(settings.system_database_url)
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("connect_args", {"server_settings": session_timeouts(settings)})
    kwargs.setdefault("pool_size", settings.gateway_db_pool_size)
    kwargs.setdefault("max_overflow", 0)
    # A request waiting longer than this for a pooled connection gets 503 with Retry-After
    # (gateway/http/middleware.py) instead of queueing for SQLAlchemy's default 30 s.
    kwargs.setdefault("pool_timeout", settings.gateway_db_pool_timeout_s)
    # No pre-ping: with asyncpg it is three round trips (BEGIN; ";"; ROLLBACK) per checkout, 6 of the
    # 15 database round trips of a submission (bench/accept.py). A connection that died with the
    # server fails one request with a 5xx, and SQLAlchemy then invalidates the whole pool.
    kwargs.setdefault("pool_pre_ping", False)
    kwargs.setdefault("pool_recycle", 1800)
    kwargs.setdefault("pool_use_lifo", True)  # see make_sync_engine
    return create_async_engine(url, **kwargs)


def make_sync_engine(settings: Settings, *, system_scope: bool = False, **kwargs: Any) -> Engine:
    """``system_scope``: the connection acts for the system (workers, sweeper, CLI) and logs in with
    ``system_database_url``, a member of ``medparse_system``, which the row-level security policies
    let see every tenant's rows (migration 0007); the gateway never uses it. No setting of a session
    can widen what a role sees: that is decided by which role logged in."""
    url = settings.sync_system_database_url if system_scope else settings.sync_database_url
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    options = _libpq_options(settings)
    if system_scope:
        # jit off: the workers' statements are small, and JIT-compiling one (the dispatcher's fair
        # batch while the tables were unanalyzed, say) costs more than running it.
        options = f"-c jit=off {options}"
    kwargs.setdefault("connect_args", {"options": options})
    kwargs.setdefault("pool_size", max(4, settings.worker_concurrency + 2))
    # Last in, first out: at low load the same few connections serve every request, with their
    # prepared statements and caches warm, instead of each pooled connection in turn (a cold
    # connection prepares every statement again: about 1 ms more per request, bench/latency.py).
    kwargs.setdefault("pool_use_lifo", True)
    engine = create_engine(url, **kwargs)
    if not kwargs.get("pool_pre_ping"):
        _ping_when_idle(engine, settings.db_ping_after_idle_s)
    return engine


def _ping_when_idle(engine: Engine, idle_s: float) -> None:
    """Check a pooled connection before use only if it sat idle for ``idle_s``.

    SQLAlchemy's pre-ping costs a round trip on every checkout, one of the four or five of a
    worker's short transactions. A connection a Postgres restart killed has, in practice, waited
    out the restart in the pool; one used a moment ago is alive. A dead one is replaced: raising
    DisconnectionError makes the pool discard it and check out another.
    """

    @event.listens_for(engine, "checkin")
    def _stamp(dbapi_connection: Any, record: Any) -> None:
        record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        checked_in_at = record.info.get("checked_in_at")
        if checked_in_at is None or time.monotonic() - checked_in_at < idle_s:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # any failure: this connection is not usable
            raise DisconnectionError() from exc
