"""Shared fixtures: throwaway Postgres databases and Redis key spaces, built fresh per test.

The suite needs the machine's PostgreSQL and Redis. When either is unreachable the fixtures
FAIL (never skip): a green run must mean the service was tested against real servers.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from sqlalchemy.engine import make_url

from medparse.migrate import upgrade
from medparse.settings import Settings

PG_ADMIN_URL = os.environ.get("MEDPARSE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("MEDPARSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _admin_conninfo() -> str:
    url = make_url(PG_ADMIN_URL)
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_available() -> None:
    try:
        with psycopg.connect(_admin_conninfo(), connect_timeout=5) as conn:
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
    name = f"medparse_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_admin_conninfo(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(PG_ADMIN_URL).set(drivername="postgresql+asyncpg", database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_admin_conninfo(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_namespace(redis_available: None) -> Iterator[str]:
    """A private key prefix; every key under it is deleted afterwards."""
    namespace = f"mptest-{uuid.uuid4().hex[:10]}"
    yield namespace
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


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
