"""Tenancy over real HTTP with Postgres + Redis: quotas, rate limits, idempotency, admin API, usage."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr
from sqlalchemy import update

from db.engine import make_sync_engine
from db.models import Tenant
from gateway.app import create_app
from medparse.settings import Settings
from runtime.cli import create_tenant
from tests.support.factories import new_tenant, organ_image, random_name

#: The operator's bearer token; the server is configured with its SHA-256 only.
OPERATOR_TOKEN = "op-" + "7" * 40


@pytest.fixture
async def api(pg_settings: Settings) -> AsyncIterator[TestClient]:
    digest = hashlib.sha256(OPERATOR_TOKEN.encode()).hexdigest()
    settings = pg_settings.model_copy(update={"operator_token_sha256": SecretStr(digest)})
    async with TestClient(TestServer(create_app(settings))) as client:
        yield client


def auth(key: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **extra}


def set_quotas(settings: Settings, tenant_id: uuid.UUID, **quotas: object) -> None:
    engine = make_sync_engine(settings)
    with engine.begin() as conn:
        conn.execute(update(Tenant).where(Tenant.id == tenant_id).values(**quotas))
    engine.dispose()


def job_body(seed: int = 1, prompts: str = "liver & kidney") -> dict[str, object]:
    image, _ = organ_image(seed=seed)
    return {"image_base64": base64.b64encode(image).decode(), "prompts": prompts}


async def test_a_tenant_over_its_request_rate_gets_429_with_retry_after(api: TestClient, pg_settings: Settings) -> None:
    tenant_id, key = new_tenant(pg_settings)
    set_quotas(pg_settings, tenant_id, rate_limit_rps=2.0)  # burst scales with it: 4 requests
    statuses = [(await api.get("/v1/jobs", headers=auth(key))).status for _ in range(10)]
    assert statuses[:4] == [200] * 4 and 429 in statuses
    resp = await api.get("/v1/jobs", headers=auth(key))
    body = await resp.json()
    assert resp.status == 429 and body["code"] == "rate_limited" and int(resp.headers["Retry-After"]) >= 1
    _, other = new_tenant(pg_settings)  # another tenant is not affected
    assert (await api.get("/v1/jobs", headers=auth(other))).status == 200


async def test_queued_jobs_quota_and_image_size_quota(api: TestClient, pg_settings: Settings) -> None:
    tenant_id, key = new_tenant(pg_settings)
    set_quotas(pg_settings, tenant_id, max_queued_jobs=2)
    for seed in (1, 2):
        assert (await api.post("/v1/jobs", json=job_body(seed), headers=auth(key))).status == 202
    resp = await api.post("/v1/jobs", json=job_body(3), headers=auth(key))
    assert resp.status == 429 and (await resp.json())["code"] == "queued_jobs_quota_exceeded"
    set_quotas(pg_settings, tenant_id, max_queued_jobs=None, max_image_bytes=1000)
    resp = await api.post("/v1/jobs", json=job_body(4), headers=auth(key))
    assert resp.status == 413 and (await resp.json())["fields"][0]["field"] == "image"


async def test_same_idempotency_key_and_body_replays_the_first_response(api: TestClient, pg_settings: Settings) -> None:
    _, key = new_tenant(pg_settings)
    headers = auth(key, **{"Idempotency-Key": "order-1"})
    first = await api.post("/v1/jobs", json=job_body(), headers=headers)
    second = await api.post("/v1/jobs", json=job_body(), headers=headers)
    assert first.status == second.status == 202
    assert (await first.json())["id"] == (await second.json())["id"]
    assert second.headers["Idempotent-Replayed"] == "true" and second.headers["Location"] == first.headers["Location"]
    listing = await (await api.get("/v1/jobs", headers=auth(key))).json()
    assert len(listing["data"]) == 1


async def test_multipart_retry_with_a_new_boundary_still_matches(api: TestClient, pg_settings: Settings) -> None:
    import aiohttp

    _, key = new_tenant(pg_settings)
    image, _ = organ_image()
    ids = []
    for _ in range(2):  # aiohttp draws a new random boundary for each form
        form = aiohttp.FormData()
        form.add_field("image", image, filename="x.png", content_type="image/png")
        form.add_field("prompts", "liver")
        resp = await api.post("/v1/jobs", data=form, headers=auth(key, **{"Idempotency-Key": "k-mp"}))
        ids.append((await resp.json())["id"])
    assert ids[0] == ids[1]


@pytest.fixture
async def backend_api(backend_settings: Settings) -> AsyncIterator[TestClient]:
    """``api`` on each backend in turn (tests/conftest.py ``backend_settings``)."""
    digest = hashlib.sha256(OPERATOR_TOKEN.encode()).hexdigest()
    settings = backend_settings.model_copy(update={"operator_token_sha256": SecretStr(digest)})
    async with TestClient(TestServer(create_app(settings))) as client:
        yield client


async def test_same_key_with_another_body_is_422_and_keys_are_per_tenant(
    backend_api: TestClient, backend_settings: Settings
) -> None:
    """Also on the embedded SQLite, where no row-level security backs the queries' tenant filter."""
    api = backend_api
    _, key = new_tenant(backend_settings)
    _, other = new_tenant(backend_settings)
    headers = auth(key, **{"Idempotency-Key": "shared"})
    assert (await api.post("/v1/jobs", json=job_body(), headers=headers)).status == 202
    reused = await api.post("/v1/jobs", json=job_body(prompts="tumor"), headers=headers)
    assert reused.status == 422 and (await reused.json())["code"] == "idempotency_key_reused"
    elsewhere = await api.post("/v1/jobs", json=job_body(), headers=auth(other, **{"Idempotency-Key": "shared"}))
    assert elsewhere.status == 202 and "Idempotent-Replayed" not in elsewhere.headers
    too_long = await api.post("/v1/jobs", json=job_body(), headers=auth(key, **{"Idempotency-Key": "x" * 256}))
    assert too_long.status == 400


async def test_concurrent_duplicates_create_exactly_one_job(api: TestClient, pg_settings: Settings) -> None:
    tenant_id, key = new_tenant(pg_settings)
    set_quotas(pg_settings, tenant_id, rate_limit_rps=1000.0)
    headers = auth(key, **{"Idempotency-Key": "burst"})
    responses = await asyncio.gather(*(api.post("/v1/jobs", json=job_body(), headers=headers) for _ in range(20)))
    statuses = sorted(r.status for r in responses)
    assert set(statuses) <= {202, 409}
    ids = {(await r.json())["id"] for r in responses if r.status == 202}
    assert len(ids) == 1
    conflict = next((r for r in responses if r.status == 409), None)
    if conflict is not None:
        assert (await conflict.json())["code"] == "idempotency_request_in_flight"
    listing = await (await api.get("/v1/jobs", headers=auth(key))).json()
    assert [j["id"] for j in listing["data"]] == list(ids)


async def test_a_failed_request_frees_its_idempotency_key(api: TestClient, pg_settings: Settings) -> None:
    _, key = new_tenant(pg_settings)
    headers = auth(key, **{"Idempotency-Key": "retry-me"})
    bad = await api.post("/v1/jobs", json={"image_base64": base64.b64encode(b"junk").decode(), "prompts": "x"},
                         headers=headers)
    assert bad.status == 415
    # The rejected request did not consume the key: a corrected request may use it.
    retry = await api.post("/v1/jobs", json=job_body(), headers=headers)
    assert retry.status == 202


async def test_the_queued_jobs_quota_holds_in_the_transaction_concurrent_submissions_share(
    api: TestClient, pg_settings: Settings
) -> None:
    """Checked in the job's transaction (one at a time per gateway process: submit_batch_concurrency 1),
    the quota is exact under a burst; a refused submission's Idempotency-Key was never claimed."""
    tenant_id, key = new_tenant(pg_settings)
    set_quotas(pg_settings, tenant_id, max_queued_jobs=3, rate_limit_rps=1000.0)
    responses = await asyncio.gather(*(
        api.post("/v1/jobs", json=job_body(seed), headers=auth(key, **{"Idempotency-Key": f"burst-{seed}"}))
        for seed in range(8)
    ))
    assert sorted(r.status for r in responses) == [202] * 3 + [429] * 5
    refused = [seed for seed, r in enumerate(responses) if r.status == 429]
    for seed in refused:
        assert (await responses[seed].json())["code"] == "queued_jobs_quota_exceeded"
        assert responses[seed].headers["Retry-After"] == "30"
    set_quotas(pg_settings, tenant_id, max_queued_jobs=None)
    # Another request under a refused one's key: not 422 idempotency_key_reused, the key is free.
    retry = await api.post("/v1/jobs", json=job_body(refused[0], prompts="tumor"),
                           headers=auth(key, **{"Idempotency-Key": f"burst-{refused[0]}"}))
    assert retry.status == 202 and "Idempotent-Replayed" not in retry.headers


async def test_admin_api_manages_tenants_and_keys_and_revocation_is_immediate(
    api: TestClient, pg_settings: Settings
) -> None:
    admin = OPERATOR_TOKEN  # tenants and quotas are the operator's (tests/integration/test_admin_roles.py)
    _, plain = new_tenant(pg_settings)
    assert (await api.get("/v1/admin/tenants", headers=auth(plain))).status == 403
    name = random_name("lab")
    created = await api.post("/v1/admin/tenants", json={"name": name, "max_running_jobs": 4}, headers=auth(admin))
    tenant = await created.json()
    assert created.status == 201 and tenant["max_running_jobs"] == 4
    dup = await api.post("/v1/admin/tenants", json={"name": name}, headers=auth(admin))
    assert dup.status == 409
    patched = await api.patch(f"/v1/admin/tenants/{tenant['id']}", json={"max_running_jobs": None}, headers=auth(admin))
    assert (await patched.json())["max_running_jobs"] is None
    made = await api.post(
        f"/v1/admin/tenants/{tenant['id']}/keys", json={"scopes": ["jobs:read"], "label": "viewer"}, headers=auth(admin)
    )
    issued = await made.json()
    assert made.status == 201 and issued["key"].startswith("mpk_") and issued["scopes"] == ["jobs:read"]
    assert (await api.get("/v1/jobs", headers=auth(issued["key"]))).status == 200
    assert (await api.post("/v1/jobs", json=job_body(), headers=auth(issued["key"]))).status == 403
    keys = await (await api.get(f"/v1/admin/tenants/{tenant['id']}/keys", headers=auth(admin))).json()
    assert [k["id"] for k in keys["data"]] == [issued["id"]] and "key" not in keys["data"][0]
    revoked = await api.post(f"/v1/admin/keys/{issued['id']}/revoke", headers=auth(admin))
    assert revoked.status == 200 and (await revoked.json())["revoked_at"]
    after = await api.get("/v1/jobs", headers=auth(issued["key"]))
    assert after.status == 401 and "revoked" in (await after.json())["detail"]


async def test_an_expired_key_is_refused(backend_api: TestClient) -> None:
    """Also on the embedded SQLite, whose naive timestamps come back as UTC (db/types.py)."""
    api, admin = backend_api, OPERATOR_TOKEN
    tenant = await (await api.post("/v1/admin/tenants", json={"name": random_name()}, headers=auth(admin))).json()
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    issued = await (await api.post(
        f"/v1/admin/tenants/{tenant['id']}/keys", json={"expires_at": past}, headers=auth(admin)
    )).json()
    resp = await api.get("/v1/jobs", headers=auth(issued["key"]))
    assert resp.status == 401 and "expired" in (await resp.json())["detail"]


async def test_usage_counts_the_tenants_jobs_and_prompts_only(
    backend_api: TestClient, backend_settings: Settings
) -> None:
    """Also on the embedded SQLite, where no row-level security backs the queries' tenant filter."""
    api = backend_api
    _, key = new_tenant(backend_settings)
    _, other = new_tenant(backend_settings)
    for seed in (1, 2):
        await api.post("/v1/jobs", json=job_body(seed, prompts="liver & kidney & tumor"), headers=auth(key))
    await api.post("/v1/jobs", json=job_body(), headers=auth(other))
    usage = await (await api.get("/v1/usage", headers=auth(key))).json()
    assert usage["jobs"] == {"queued": 2} and usage["images"] == 2 and usage["prompts"] == 6
    assert usage["endpoint_calls"] == 0 and set(usage) >= {"from", "to", "endpoint_seconds"}
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    window = {"from": tomorrow.isoformat(), "to": (tomorrow + timedelta(days=1)).isoformat()}
    empty = await (await api.get("/v1/usage", params=window, headers=auth(key))).json()
    assert empty["images"] == 0 and empty["jobs"] == {}
    backwards = await api.get("/v1/usage", params={"from": window["to"], "to": window["from"]}, headers=auth(key))
    assert backwards.status == 400


async def test_posts_whose_answer_holds_a_secret_refuse_an_idempotency_key(
    api: TestClient, pg_settings: Settings
) -> None:
    tenant_id, key = new_tenant(pg_settings)
    headers = auth(key, **{"Idempotency-Key": "secret-1"})
    for path in ("/v1/webhooks/default/rotate-secret", f"/v1/admin/tenants/{tenant_id}/keys"):
        refused = await api.post(path, json={"scopes": ["jobs:read"]}, headers=headers)
        assert refused.status == 400 and (await refused.json())["fields"][0]["field"] == "Idempotency-Key", path


async def test_other_posts_replay_under_an_idempotency_key(api: TestClient, pg_settings: Settings) -> None:
    _, key = new_tenant(pg_settings)
    job = await (await api.post("/v1/jobs", json=job_body(), headers=auth(key))).json()
    headers = auth(key, **{"Idempotency-Key": "cancel-1"})
    first = await api.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
    again = await api.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
    assert first.status == again.status == 200  # without the key the second cancel would be 409
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await first.json() == await again.json()
    other_job = await (await api.post("/v1/jobs", json=job_body(2), headers=auth(key))).json()
    reused = await api.post(f"/v1/jobs/{other_job['id']}/cancel", headers=headers)
    assert reused.status == 422 and (await reused.json())["code"] == "idempotency_key_reused"


async def test_an_idempotency_key_is_refused_where_the_answer_holds_a_secret(
    api: TestClient, pg_settings: Settings
) -> None:
    tenant_id, admin = create_tenant(pg_settings, random_name("ops"), scopes=["admin"])
    resp = await api.post(
        f"/v1/admin/tenants/{tenant_id}/keys", json={}, headers=auth(admin, **{"Idempotency-Key": "k"})
    )
    assert resp.status == 400 and (await resp.json())["fields"][0]["field"] == "Idempotency-Key"


async def test_the_slowest_allowed_rate_still_answers_429_not_an_error(api: TestClient, pg_settings: Settings) -> None:
    tenant_id, key = new_tenant(pg_settings)
    set_quotas(pg_settings, tenant_id, rate_limit_rps=0.01)  # one request per 100 s, burst 1 (regression: 503)
    statuses = [(await api.get("/v1/jobs", headers=auth(key))).status for _ in range(3)]
    assert statuses[0] == 200 and statuses[1:] == [429, 429]
    resp = await api.get("/v1/jobs", headers=auth(key))
    assert 1 <= int(resp.headers["Retry-After"]) <= 100
