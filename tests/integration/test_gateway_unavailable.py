"""A database that is slow, saturated or down answers 503 with Retry-After, never 500; statement
and idle-in-transaction timeouts on every Postgres session (db/engine.py, gateway/http/middleware.py)."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError

from db.engine import make_async_engine, make_sync_engine
from gateway.app import create_app
from gateway.http.middleware import backing_service_unavailable
from gateway.http.ratelimit import RateLimiter
from gateway.keys import ENGINE
from medparse.settings import Settings, to_sync_url
from tests.support.factories import new_tenant


def _conninfo(settings: Settings) -> str:
    return to_sync_url(settings.async_database_url).replace("postgresql+psycopg://", "postgresql://")


async def test_the_gateway_engine_cancels_a_statement_over_the_timeout(pg_settings: Settings) -> None:
    engine = make_async_engine(pg_settings.model_copy(update={
        "db_statement_timeout_s": 0.2, "db_idle_in_transaction_timeout_s": 3.0,
    }))
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SHOW idle_in_transaction_session_timeout"))).scalar_one() == "3s"
            await conn.execute(text("SELECT pg_sleep(0.05)"))  # under the limit: fine
        with pytest.raises(DBAPIError) as raised:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT pg_sleep(2)"))
        assert getattr(raised.value.orig, "sqlstate", None) == "57014"  # query_canceled
        assert backing_service_unavailable(raised.value)
    finally:
        await engine.dispose()


def test_worker_engines_cancel_a_statement_over_the_timeout(pg_settings: Settings) -> None:
    engine = make_sync_engine(pg_settings.model_copy(update={"db_statement_timeout_s": 0.2}), system_scope=True)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "200ms"
            assert conn.execute(text("SHOW jit")).scalar_one() == "off"  # the system options still apply
            with pytest.raises(OperationalError) as raised:
                conn.execute(text("SELECT pg_sleep(2)"))
        assert backing_service_unavailable(raised.value)
    finally:
        engine.dispose()


def test_a_session_left_idle_in_a_transaction_is_ended(pg_settings: Settings) -> None:
    engine = make_sync_engine(pg_settings.model_copy(update={"db_idle_in_transaction_timeout_s": 0.3}))
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))  # opens the transaction (autobegin)
            time.sleep(1.0)
            with pytest.raises(DBAPIError) as raised:
                conn.execute(text("SELECT 1"))
        assert getattr(raised.value.orig, "sqlstate", None) == "25P03"  # idle_in_transaction_session_timeout
    finally:
        engine.dispose()


def test_genuine_bugs_are_not_mistaken_for_an_unavailable_database(pg_settings: Settings) -> None:
    engine = make_sync_engine(pg_settings)
    try:
        with engine.connect() as conn, pytest.raises(DBAPIError) as raised:
            conn.execute(text("SELECT * FROM no_such_table"))
    finally:
        engine.dispose()
    assert not backing_service_unavailable(raised.value)
    assert not backing_service_unavailable(ValueError("a bug"))
    assert not backing_service_unavailable(KeyError("a bug"))


@pytest.fixture
async def tiny_pool_api(pg_settings: Settings) -> AsyncIterator[TestClient]:
    settings = pg_settings.model_copy(update={
        "gateway_db_pool_size": 1, "gateway_db_pool_timeout_s": 0.3, "db_statement_timeout_s": 0.5,
    })
    async with TestClient(TestServer(create_app(settings))) as client:
        yield client


async def test_a_flood_of_bogus_keys_on_an_exhausted_pool_gets_503_with_retry_after(
    tiny_pool_api: TestClient, pg_settings: Settings
) -> None:
    key = new_tenant(pg_settings)[1]
    engine = tiny_pool_api.server.app[ENGINE]
    async with engine.connect():  # the pool's only connection is taken
        bogus = [f"mpk_{uuid.uuid4().hex[:16]}_{uuid.uuid4().hex}" for _ in range(20)]
        responses = await asyncio.gather(*(
            tiny_pool_api.get("/v1/jobs", headers={"Authorization": f"Bearer {k}"}) for k in bogus
        ))
        for resp in responses:
            assert resp.status == 503, await resp.text()
            assert resp.headers["Retry-After"] == "2"
            assert (await resp.json())["code"] == "service_unavailable"
        assert (await tiny_pool_api.get("/healthz")).status == 200  # needs no database
    # the connection is back: bogus keys are 401 again, a real one works
    resp = await tiny_pool_api.get("/v1/jobs", headers={"Authorization": f"Bearer {bogus[0]}"})
    assert resp.status == 401
    assert (await tiny_pool_api.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"})).status == 200


async def test_a_statement_cancelled_by_the_timeout_is_503_not_500(
    tiny_pool_api: TestClient, pg_settings: Settings
) -> None:
    key = new_tenant(pg_settings)[1]
    with psycopg.connect(_conninfo(pg_settings)) as conn:
        conn.execute("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
        resp = await tiny_pool_api.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"})
        conn.rollback()
    assert resp.status == 503, await resp.text()
    assert resp.headers["Retry-After"] == "2"
    assert (await tiny_pool_api.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"})).status == 200


async def test_a_database_that_is_down_answers_503(pg_settings: Settings) -> None:
    settings = pg_settings.model_copy(update={"database_url": "postgresql+asyncpg://postgres@127.0.0.1:1/none"})
    async with TestClient(TestServer(create_app(settings))) as api:
        resp = await api.get("/v1/jobs", headers={"Authorization": f"Bearer mpk_{'a' * 16}_{'b' * 32}"})
        assert resp.status == 503, await resp.text()
        assert resp.headers["Retry-After"] == "2"


@pytest.fixture
def silent_redis() -> Iterator[str]:
    """A "Redis" that accepts connections (the kernel completes them) and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"


async def test_a_redis_that_stopped_answering_gets_503_not_a_hung_request(
    pg_settings: Settings, silent_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = pg_settings.model_copy(update={"gateway_redis_timeout_s": 0.3})
    key = new_tenant(settings)[1]
    # Only the rate limiter (the Redis call on every /v1 request) talks to the silent server.
    monkeypatch.setattr(
        "gateway.app.RateLimiter", lambda s: RateLimiter(s.model_copy(update={"redis_url": silent_redis}))
    )
    async with TestClient(TestServer(create_app(settings))) as api:
        began = time.monotonic()
        resp = await api.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"})
        assert resp.status == 503, await resp.text()
        assert resp.headers["Retry-After"] == "2"
        assert time.monotonic() - began < 3.0
        assert (await api.get("/healthz")).status == 200
