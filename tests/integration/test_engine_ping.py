"""Workers' pooled connections are checked before use only after sitting idle (db/engine.py)."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from db.engine import make_sync_engine
from medparse.settings import Settings


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _kill(settings: Settings, pid: int) -> None:
    killer = make_sync_engine(settings)
    try:
        with killer.begin() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    finally:
        killer.dispose()


def _settings(pg_settings: Settings, idle_s: float) -> Settings:
    return pg_settings.model_copy(update={"db_ping_after_idle_s": idle_s})


def test_an_idle_connection_killed_by_the_server_is_replaced(pg_settings: Settings) -> None:
    engine = make_sync_engine(_settings(pg_settings, 0.0), pool_use_lifo=False, pool_size=2)
    try:
        first = _backend_pid(engine)
        _kill(pg_settings, first)
        # The next checkout gets the killed connection (the only one), which the ping finds dead.
        assert _backend_pid(engine) != first
    finally:
        engine.dispose()


def test_a_recently_used_connection_is_not_pinged(pg_settings: Settings) -> None:
    engine = make_sync_engine(_settings(pg_settings, 3600.0), pool_use_lifo=False, pool_size=2)
    try:
        first = _backend_pid(engine)
        _kill(pg_settings, first)
        with pytest.raises(DBAPIError) as failed:  # no ping: the statement finds the dead connection
            _backend_pid(engine)
        assert failed.value.connection_invalidated
        assert _backend_pid(engine) != first  # and the pool has replaced it
    finally:
        engine.dispose()
