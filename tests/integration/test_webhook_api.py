"""The webhook API over real HTTP against a migrated Postgres (no worker running)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import Engine, select, update

from db.engine import make_sync_engine
from db.models import JobWebhook, WebhookDelivery
from gateway.app import create_app
from gateway.webhooks.submission import WEBHOOK_POLICY, TargetPolicy
from medparse.settings import Settings
from tests.support.factories import new_tenant, organ_image
from tests.support.webhooks import insert_job, run_job_to

HOSTS = {"hooks.example.org": ["93.184.216.34"], "internal.example.org": ["93.184.216.34", "10.0.0.5"],
         "meta.example.org": ["169.254.169.254"], "v6.example.org": ["::1"]}
PUBLIC_URL = "https://hooks.example.org/medparse"


def fake_dns(host: str, port: int) -> list[str]:
    if host not in HOSTS:
        raise OSError("NXDOMAIN")
    return HOSTS[host]


@pytest.fixture
async def api(pg_settings: Settings) -> AsyncIterator[TestClient]:
    app = create_app(pg_settings.model_copy(update={"webhook_max_endpoints": 3}))
    app[WEBHOOK_POLICY] = TargetPolicy(allow_private=False, resolver=fake_dns)
    async with TestClient(TestServer(app)) as client:
        yield client


@pytest.fixture
def engine(pg_settings: Settings) -> Iterator[Engine]:
    eng = make_sync_engine(pg_settings)
    yield eng
    eng.dispose()


@pytest.fixture
def key(pg_settings: Settings) -> str:
    return new_tenant(pg_settings)[1]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def create(api: TestClient, key: str, **body: object) -> dict[str, object]:
    resp = await api.post("/v1/webhooks", json={"url": PUBLIC_URL, **body}, headers=auth(key))
    assert resp.status == 201, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def test_webhook_endpoints_can_be_created_listed_changed_and_deleted(api: TestClient, key: str) -> None:
    created = await create(api, key, event_types=["job.failed", "job.succeeded"], description="billing")
    assert str(created["secret"]).startswith("whsec_") and created["enabled"] is True
    assert created["event_types"] == ["job.succeeded", "job.failed"]
    location = f"/v1/webhooks/{created['id']}"
    got = await (await api.get(location, headers=auth(key))).json()
    assert got["url"] == PUBLIC_URL and "secret" not in got
    listed = await (await api.get("/v1/webhooks", headers=auth(key))).json()
    assert [w["id"] for w in listed["data"]] == [created["id"]]
    secret = await (await api.get(f"{location}/secret", headers=auth(key))).json()
    assert secret == {"key": created["secret"], "previous_key_expires_at": None}

    patched = await api.patch(location, json={"event_types": None, "enabled": False}, headers=auth(key))
    body = await patched.json()
    assert patched.status == 200 and body["event_types"] is None and body["enabled"] is False
    assert body["disabled_reason"] == "disabled_by_tenant" and body["description"] == "billing"
    body = await (await api.patch(location, json={"enabled": True}, headers=auth(key))).json()
    assert body["enabled"] is True and body["disabled_reason"] is None

    rotated = await (await api.post(f"{location}/rotate-secret", headers=auth(key))).json()
    assert rotated["key"] != created["secret"] and rotated["previous_key_expires_at"] is not None

    assert (await api.delete(location, headers=auth(key))).status == 204
    assert (await api.get(location, headers=auth(key))).status == 404


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://10.0.0.1/", "private"),
        ("http://192.168.1.20/", "private"),
        ("http://100.64.0.1/", "cgnat"),
        ("http://2130706433/", "non_canonical_ip"),
        ("http://0x7f000001/", "non_canonical_ip"),
        ("http://0177.0.0.1/", "non_canonical_ip"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[fe80::1]/", "link_local"),
        ("http://224.0.0.1/", "multicast"),
        ("https://internal.example.org/hook", "private"),
        ("https://meta.example.org/hook", "metadata"),
        ("https://v6.example.org/hook", "loopback"),
        ("https://nowhere.example.org/hook", "unresolvable"),
        ("ftp://hooks.example.org/hook", "invalid_scheme"),
        ("https://user:pw@hooks.example.org/hook", "credentials_in_url"),
    ],
)
async def test_registration_refuses_unsafe_targets_with_422_naming_the_url_field(
    api: TestClient, key: str, url: str, reason: str
) -> None:
    resp = await api.post("/v1/webhooks", json={"url": url}, headers=auth(key))
    body = await resp.json()
    assert resp.status == 422, body
    assert body["fields"][0]["field"] == "url" and body["fields"][0]["reason"] == reason
    assert (await (await api.get("/v1/webhooks", headers=auth(key))).json())["data"] == []


async def test_registration_checks_event_types_and_the_per_tenant_limit(api: TestClient, key: str) -> None:
    resp = await api.post("/v1/webhooks", json={"url": PUBLIC_URL, "event_types": ["job.exploded"]}, headers=auth(key))
    assert resp.status == 422 and (await resp.json())["fields"][0]["field"] == "event_types"
    resp = await api.post("/v1/webhooks", json={"url": PUBLIC_URL, "secret": "mine"}, headers=auth(key))
    assert resp.status == 422
    for _ in range(3):
        await create(api, key)
    resp = await api.post("/v1/webhooks", json={"url": PUBLIC_URL}, headers=auth(key))
    assert resp.status == 409 and (await resp.json())["code"] == "webhook_limit_reached"


def job_form(**fields: str | list[str]) -> aiohttp.FormData:
    image, _ = organ_image()
    data = aiohttp.FormData()
    data.add_field("image", image, filename="x.png", content_type="image/png")
    data.add_field("prompts", "liver")
    for name, value in fields.items():
        for v in [value] if isinstance(value, str) else value:
            data.add_field(name, v)
    return data


async def test_a_job_webhook_url_is_checked_and_stored_with_its_events(
    api: TestClient, key: str, engine: Engine
) -> None:
    resp = await api.post("/v1/jobs", data=job_form(
        webhook_url=PUBLIC_URL, webhook_events=["job.started,job.failed", "job.succeeded"]), headers=auth(key))
    assert resp.status == 202, await resp.text()
    multipart_job = uuid.UUID((await resp.json())["id"])
    image, _ = organ_image()
    resp = await api.post("/v1/jobs", json={
        "image_base64": base64.b64encode(image).decode(), "prompts": "liver", "webhook_url": PUBLIC_URL,
    }, headers=auth(key))
    assert resp.status == 202
    json_job = uuid.UUID((await resp.json())["id"])
    with engine.begin() as conn:
        hooks = dict(conn.execute(select(JobWebhook.job_id, JobWebhook.event_types)).all())
    assert hooks[multipart_job] == ["job.started", "job.succeeded", "job.failed"]
    assert hooks[json_job] == ["job.succeeded", "job.failed", "job.canceled"]  # the default: terminal events
    # The tenant's default secret exists from the first job on.
    assert str((await (await api.get("/v1/webhooks/default/secret", headers=auth(key))).json())["key"]).startswith(
        "whsec_")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"webhook_url": "http://127.0.0.1:9/hook"}, "webhook_url"),
        ({"webhook_url": "http://169.254.169.254/"}, "webhook_url"),
        ({"webhook_url": "https://internal.example.org/"}, "webhook_url"),
        ({"webhook_url": "http://0x7f000001/"}, "webhook_url"),
        ({"webhook_url": PUBLIC_URL, "webhook_events": "job.exploded"}, "webhook_events"),
        ({"webhook_events": "job.failed"}, "webhook_events"),
    ],
)
async def test_a_job_with_an_unacceptable_webhook_is_refused_naming_the_field(
    api: TestClient, key: str, fields: dict[str, str], field: str
) -> None:
    resp = await api.post("/v1/jobs", data=job_form(**fields), headers=auth(key))
    body = await resp.json()
    assert resp.status == 422 and body["fields"][0]["field"] == field, body
    image, _ = organ_image()
    json_body = {"image_base64": base64.b64encode(image).decode(), "prompts": "liver", **fields}
    if "webhook_events" in fields:
        json_body["webhook_events"] = [fields["webhook_events"]]
    resp = await api.post("/v1/jobs", json=json_body, headers=auth(key))
    assert resp.status == 422 and (await resp.json())["fields"][0]["field"] == field
    assert (await (await api.get("/v1/jobs", headers=auth(key))).json())["data"] == []


async def test_the_default_secret_is_stable_and_rotates_with_an_overlap(api: TestClient, key: str) -> None:
    first = await (await api.get("/v1/webhooks/default/secret", headers=auth(key))).json()
    again = await (await api.get("/v1/webhooks/default/secret", headers=auth(key))).json()
    assert first == again and first["previous_key_expires_at"] is None
    rotated = await (await api.post("/v1/webhooks/default/rotate-secret", headers=auth(key))).json()
    assert rotated["key"] != first["key"] and rotated["previous_key_expires_at"] is not None
    assert (await (await api.get("/v1/webhooks/default/secret", headers=auth(key))).json())["key"] == rotated["key"]


async def test_canceling_a_job_records_job_canceled_and_deliveries_can_be_listed_and_replayed(
    api: TestClient, key: str, engine: Engine
) -> None:
    resp = await api.post("/v1/jobs", data=job_form(webhook_url=PUBLIC_URL, webhook_events="job.canceled"),
                          headers=auth(key))
    job_id = (await resp.json())["id"]
    assert (await api.post(f"/v1/jobs/{job_id}/cancel", headers=auth(key))).status == 200
    listed = await (await api.get(f"/v1/jobs/{job_id}/deliveries", headers=auth(key))).json()
    (item,) = listed["data"]
    assert item["event_type"] == "job.canceled" and item["status"] == "pending" and item["target"] == "job_url"
    assert item["webhook_id"] == f"msg_{uuid.UUID(item['id']).hex}" and item["attempts"] == []
    assert (await api.post(f"/v1/jobs/{job_id}/cancel", headers=auth(key))).status == 409
    assert len((await (await api.get(f"/v1/jobs/{job_id}/deliveries", headers=auth(key))).json())["data"]) == 1

    with engine.begin() as conn:  # as if the schedule ran out
        conn.execute(update(WebhookDelivery).values(status="failed", next_attempt_at=None, failures=7))
    failed = await (await api.get("/v1/deliveries?status=failed", headers=auth(key))).json()
    assert [d["id"] for d in failed["data"]] == [item["id"]]
    resp = await api.post(f"/v1/deliveries/{item['id']}/redeliver", headers=auth(key))
    body = await resp.json()
    assert resp.status == 202 and body["status"] == "pending" and body["webhook_id"] == item["webhook_id"]
    with engine.begin() as conn:
        assert conn.execute(select(WebhookDelivery.failures)).scalar_one() == 0
    one = await (await api.get(f"/v1/deliveries/{item['id']}", headers=auth(key))).json()
    assert one["status"] == "pending"
    bad = await api.get("/v1/deliveries?status=lost", headers=auth(key))
    assert bad.status == 400 and (await bad.json())["fields"][0]["field"] == "status"


async def test_deliveries_page_newest_first_and_disabled_endpoints_refuse_replay(
    api: TestClient, engine: Engine, pg_settings: Settings
) -> None:
    tenant_id, key = new_tenant(pg_settings)
    endpoint = await create(api, key)
    jobs = []
    for _ in range(3):
        _, job_id = insert_job(engine, pg_settings, tenant_id)
        run_job_to(engine, job_id, "succeeded")
        jobs.append(job_id)
    url = f"/v1/webhooks/{endpoint['id']}/deliveries?limit=4"
    page = await (await api.get(url, headers=auth(key))).json()
    assert len(page["data"]) == 4 and page["next_cursor"]
    rest = await (await api.get(f"{url}&cursor={page['next_cursor']}", headers=auth(key))).json()
    assert len(rest["data"]) == 2 and rest["next_cursor"] is None  # started + succeeded per job
    assert {d["job_id"] for d in page["data"] + rest["data"]} == {str(j) for j in jobs}

    await api.patch(f"/v1/webhooks/{endpoint['id']}", json={"enabled": False}, headers=auth(key))
    resp = await api.post(f"/v1/deliveries/{page['data'][0]['id']}/redeliver", headers=auth(key))
    assert resp.status == 409 and (await resp.json())["code"] == "webhook_disabled"


@pytest.fixture
async def backend_api(backend_settings: Settings) -> AsyncIterator[TestClient]:
    """``api`` on each backend in turn (tests/conftest.py ``backend_settings``)."""
    app = create_app(backend_settings.model_copy(update={"webhook_max_endpoints": 3}))
    app[WEBHOOK_POLICY] = TargetPolicy(allow_private=False, resolver=fake_dns)
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_another_tenants_webhooks_and_deliveries_answer_404_like_missing_ones(
    backend_api: TestClient, backend_settings: Settings
) -> None:
    """On Postgres and on the embedded SQLite, which has no row-level security: there the tenant
    filter of every query is all that separates tenants, and this shows it does."""
    api, key = backend_api, new_tenant(backend_settings)[1]
    engine = make_sync_engine(backend_settings)
    mine = await create(api, key, event_types=["job.succeeded"])
    resp = await api.post("/v1/jobs", data=job_form(webhook_url=PUBLIC_URL, webhook_events="job.canceled"),
                          headers=auth(key))
    job_id = (await resp.json())["id"]
    await api.post(f"/v1/jobs/{job_id}/cancel", headers=auth(key))
    (delivery,) = (await (await api.get(f"/v1/jobs/{job_id}/deliveries", headers=auth(key))).json())["data"]
    _, intruder = new_tenant(backend_settings)
    missing = uuid.uuid4()
    for theirs, nobody in [
        (f"/v1/webhooks/{mine['id']}", f"/v1/webhooks/{missing}"),
        (f"/v1/webhooks/{mine['id']}/secret", f"/v1/webhooks/{missing}/secret"),
        (f"/v1/webhooks/{mine['id']}/deliveries", f"/v1/webhooks/{missing}/deliveries"),
        (f"/v1/jobs/{job_id}/deliveries", f"/v1/jobs/{missing}/deliveries"),
        (f"/v1/deliveries/{delivery['id']}", f"/v1/deliveries/{missing}"),
    ]:
        a, b = await api.get(theirs, headers=auth(intruder)), await api.get(nobody, headers=auth(intruder))
        assert a.status == b.status == 404
        body_a, body_b = await a.json(), await b.json()
        assert (body_a["code"], body_a["detail"]) == (body_b["code"], body_b["detail"])
    for method, path in [("PATCH", f"/v1/webhooks/{mine['id']}"), ("DELETE", f"/v1/webhooks/{mine['id']}"),
                         ("POST", f"/v1/webhooks/{mine['id']}/rotate-secret"),
                         ("POST", f"/v1/deliveries/{delivery['id']}/redeliver")]:
        resp = await api.request(method, path, json={} if method == "PATCH" else None, headers=auth(intruder))
        assert resp.status == 404, (method, path)
    assert (await (await api.get("/v1/webhooks", headers=auth(intruder))).json())["data"] == []
    assert (await (await api.get("/v1/deliveries", headers=auth(intruder))).json())["data"] == []
    theirs_secret = await (await api.get("/v1/webhooks/default/secret", headers=auth(intruder))).json()
    my_secret = await (await api.get("/v1/webhooks/default/secret", headers=auth(key))).json()
    assert theirs_secret["key"] != my_secret["key"]
    # Still there for its owner.
    assert (await api.get(f"/v1/webhooks/{mine['id']}", headers=auth(key))).status == 200
    with engine.begin() as conn:
        assert conn.execute(select(WebhookDelivery.status)).scalar_one() == "pending"
    engine.dispose()
