"""Shared fixtures: throwaway Postgres databases and Redis key spaces, built fresh per test.

The suite needs the machine's PostgreSQL and Redis. When either is unreachable the fixtures
FAIL (never skip): a green run must mean the service was tested against real servers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from medparse.settings import Settings
from runtime.migrate import upgrade
from tests.support.throwaway import (
    PG_ADMIN_URL,
    REDIS_URL,
    admin_conninfo,
    throwaway_database,
    throwaway_namespace,
)


@pytest.fixture(scope="session")
def postgres_available() -> None:
    try:
        with psycopg.connect(admin_conninfo(), connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is unreachable: {exc}")


@pytest.fixture(scope="session")
def redis_available() -> None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {REDIS_URL} is unreachable: {exc}")


@pytest.fixture
def pg_url(postgres_available: None) -> Iterator[str]:
    """A fresh, empty database; dropped afterwards."""
    with throwaway_database() as database:
        yield database.async_url


@pytest.fixture
def redis_namespace(redis_available: None) -> Iterator[str]:
    """A private key prefix; every key under it is deleted afterwards."""
    with throwaway_namespace() as namespace:
        yield namespace


@pytest.fixture
def pg_settings(pg_url: str, redis_namespace: str, tmp_path: Path) -> Settings:
    """Production shape: migrated Postgres + Redis, private to this test."""
    settings = Settings(
        database_url=pg_url, redis_url=REDIS_URL, redis_namespace=redis_namespace, data_dir=tmp_path / "var"
    )
    upgrade(settings)
    return settings


@pytest.fixture
def embedded_settings(tmp_path: Path) -> Settings:
    """Embedded default: SQLite + filesystem queue under a private folder."""
    settings = Settings(data_dir=tmp_path / "var")
    upgrade(settings)
    return settings


@pytest.fixture(params=["postgres", "embedded"])
def backend_settings(request: pytest.FixtureRequest) -> Settings:
    """Each backend in turn, for tests whose claim must hold on both: Postgres + Redis (``pg_settings``),
    then the embedded SQLite + filesystem queue (``embedded_settings``)."""
    settings: Settings = request.getfixturevalue("pg_settings" if request.param == "postgres" else "embedded_settings")
    return settings
