"""One tenant's requests in progress are capped per gateway process, so that its long waits or stalled
uploads cannot fill the connection cap and lock the other tenants (and /healthz) out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from medparse.settings import Settings
from tests.integration.test_gateway_api import auth, submit
from tests.support.factories import new_tenant


@pytest.fixture
async def api(pg_settings: Settings) -> AsyncIterator[TestClient]:
    settings = pg_settings.model_copy(update={"tenant_max_concurrent_requests": 2})
    async with TestClient(TestServer(create_app(settings))) as client:
        yield client


async def test_a_tenant_beyond_its_requests_in_progress_gets_429_and_others_do_not(
    api: TestClient, pg_settings: Settings
) -> None:
    hog, other = new_tenant(pg_settings)[1], new_tenant(pg_settings)[1]
    job = await submit(api, hog)  # no worker runs: it stays queued, so a wait lasts its full length
    waits = [
        asyncio.ensure_future(api.get(f"/v1/jobs/{job['id']}", headers={**auth(hog), "Prefer": "wait=2"}))
        for _ in range(2)
    ]
    await asyncio.sleep(0.5)  # both are in their handlers now

    refused = await api.get(f"/v1/jobs/{job['id']}", headers=auth(hog))
    assert refused.status == 429
    problem = await refused.json()
    assert problem["code"] == "too_many_concurrent_requests" and refused.headers["Retry-After"] == "1"
    assert (await api.get("/v1/jobs", headers=auth(other))).status == 200
    assert (await api.get("/healthz")).status == 200

    assert [r.status for r in await asyncio.gather(*waits)] == [200, 200]
    assert (await api.get(f"/v1/jobs/{job['id']}", headers=auth(hog))).status == 200  # the places were freed
