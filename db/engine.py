"""Engine factories. Called from entry points only; nothing here runs at import time."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from medparse.settings import Settings


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the gateway read while a worker writes; foreign keys are off by default in SQLite;
    # busy_timeout makes concurrent writers wait instead of failing with "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_async_engine(settings: Settings, **kwargs: Any) -> AsyncEngine:
    url = settings.async_database_url
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_size", 16)
    kwargs.setdefault("max_overflow", 8)
    # No pre-ping: with asyncpg it is three round trips (BEGIN; ";"; ROLLBACK) per checkout, 6 of the
    # 15 database round trips of a submission (bench/accept.py). A connection that died with the
    # server fails one request with a 5xx, and SQLAlchemy then invalidates the whole pool.
    kwargs.setdefault("pool_pre_ping", False)
    kwargs.setdefault("pool_recycle", 1800)
    return create_async_engine(url, **kwargs)


def make_sync_engine(settings: Settings, *, system_scope: bool = False, **kwargs: Any) -> Engine:
    """``system_scope``: the connection acts for the system (workers, sweeper, CLI), which the
    row-level security policies let see every tenant's rows; the gateway never sets it."""
    url = settings.sync_database_url
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if system_scope:
        kwargs.setdefault("connect_args", {"options": "-c medparse.scope=system"})
    kwargs.setdefault("pool_size", max(4, settings.worker_concurrency + 2))
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)
