"""Throwaway PostgreSQL databases and Redis key spaces on the machine's shared servers.

Used by the test fixtures and the benchmarks: each run gets its own database and key prefix,
and removes them afterwards (even on failure), so nothing depends on leftovers.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
import redis
from sqlalchemy.engine import make_url

PG_ADMIN_URL = os.environ.get("MEDPARSE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("MEDPARSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def admin_conninfo() -> str:
    return make_url(PG_ADMIN_URL).set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass(frozen=True)
class ThrowawayDatabase:
    name: str
    #: for the service (``MEDPARSE_DATABASE_URL``)
    async_url: str
    #: for psycopg in the caller
    conninfo: str


@contextmanager
def throwaway_database(prefix: str = "medparse_test") -> Iterator[ThrowawayDatabase]:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_conninfo(), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(PG_ADMIN_URL).set(database=name)
    try:
        yield ThrowawayDatabase(
            name=name,
            async_url=url.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False),
            conninfo=url.set(drivername="postgresql").render_as_string(hide_password=False),
        )
    finally:
        with psycopg.connect(admin_conninfo(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def throwaway_login_role(group: str) -> Iterator[str]:
    """A login role in ``group`` (``medparse_app`` or ``medparse_system``, made by the migrations): not a
    superuser, no BYPASSRLS. Roles are cluster-wide, so its name is unique; it is dropped afterwards."""
    role = f"mp_{group.removeprefix('medparse_')}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_conninfo(), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS IN ROLE {group}")
    try:
        yield role
    finally:
        with psycopg.connect(admin_conninfo(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {role}")


@contextmanager
def throwaway_namespace(prefix: str = "mptest") -> Iterator[str]:
    """A private Redis key prefix; every key under it is deleted afterwards."""
    namespace = f"{prefix}-{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5)
    client.ping()
    try:
        yield namespace
    finally:
        keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])
        client.close()
