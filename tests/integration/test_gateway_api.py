"""The job API over real HTTP against a migrated Postgres and Redis (no worker running)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from medparse.settings import Settings
from tests.support.factories import new_tenant, organ_image


@pytest.fixture
async def api(pg_settings: Settings) -> AsyncIterator[TestClient]:
    settings = pg_settings.model_copy(update={"max_body_bytes": 200_000})
    async with TestClient(TestServer(create_app(settings))) as client:
        yield client


@pytest.fixture
def key(pg_settings: Settings) -> str:
    return new_tenant(pg_settings)[1]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def form(image: bytes, prompts: str = "liver & kidney", options: str | None = None) -> aiohttp.FormData:
    data = aiohttp.FormData()
    data.add_field("image", image, filename="x.png", content_type="image/png")
    data.add_field("prompts", prompts)
    if options is not None:
        data.add_field("options", options)
    return data


async def submit(api: TestClient, key: str, **kwargs: object) -> dict[str, object]:
    image, _ = organ_image()
    resp = await api.post("/v1/jobs", data=form(image, **kwargs), headers=auth(key))  # type: ignore[arg-type]
    assert resp.status == 202, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def test_submit_answers_202_with_location_and_a_queued_job(api: TestClient, key: str) -> None:
    image, _ = organ_image(320, 240)
    resp = await api.post("/v1/jobs", data=form(image, options='{"modality": "ct"}'), headers=auth(key))
    body = await resp.json()
    assert resp.status == 202
    assert resp.headers["Location"] == f"/v1/jobs/{body['id']}"
    assert body["status"] == "queued" and body["prompts"] == ["liver", "kidney"]
    assert body["input"] == {"width": 320, "height": 240, "format": "png", "bytes": len(image)}
    assert body["options"] == {"modality": "ct"}
    got = await (await api.get(resp.headers["Location"], headers=auth(key))).json()
    assert got["id"] == body["id"] and got["status"] == "queued" and got["result"] is None


async def test_json_submission_accepts_base64_and_a_prompt_list(api: TestClient, key: str) -> None:
    import base64

    image, _ = organ_image()
    payload = {"image_base64": base64.b64encode(image).decode(), "prompts": ["liver", "tumor"]}
    resp = await api.post("/v1/jobs", json=payload, headers=auth(key))
    assert resp.status == 202
    assert (await resp.json())["prompts"] == ["liver", "tumor"]


@pytest.mark.parametrize("header", [None, "Bearer nope", "Basic abc", "Bearer mpk_000000000000_" + "0" * 48])
async def test_v1_routes_need_a_valid_api_key(api: TestClient, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    resp = await api.get("/v1/jobs", headers=headers)
    body = await resp.json()
    assert resp.status == 401 and body["code"] == "unauthorized"
    assert resp.headers["Content-Type"].startswith("application/problem+json")


@pytest.mark.parametrize(
    ("image", "prompts", "status", "code", "field"),
    [
        (b"definitely not an image", "liver", 415, "unsupported_format", "image"),
        (organ_image()[0][:200], "liver", 422, "corrupt_image", "image"),
        (organ_image()[0], "liver && kidney", 422, "invalid_field", "prompts"),
    ],
)
async def test_bad_input_gets_a_4xx_problem_naming_the_field(
    api: TestClient, key: str, image: bytes, prompts: str, status: int, code: str, field: str
) -> None:
    resp = await api.post("/v1/jobs", data=form(image, prompts), headers=auth(key))
    body = await resp.json()
    assert (resp.status, body["code"]) == (status, code), body
    assert body["fields"][0]["field"] == field


async def test_missing_fields_and_wrong_content_type_are_4xx(api: TestClient, key: str) -> None:
    data = aiohttp.FormData(default_to_multipart=True)
    data.add_field("prompts", "liver")
    resp = await api.post("/v1/jobs", data=data, headers=auth(key))
    assert resp.status == 422 and (await resp.json())["fields"][0]["field"] == "image"
    resp = await api.post("/v1/jobs", data=b"x", headers={**auth(key), "Content-Type": "text/plain"})
    assert resp.status == 415
    resp = await api.post("/v1/jobs", data=b"{not json", headers={**auth(key), "Content-Type": "application/json"})
    assert resp.status == 422 and (await resp.json())["code"] == "invalid_request"


async def test_oversized_uploads_get_413_on_both_paths(api: TestClient, key: str) -> None:
    big = b"\x89PNG" + b"0" * 300_000
    resp = await api.post("/v1/jobs", data=form(big), headers=auth(key))
    assert resp.status == 413 and (await resp.json())["code"] == "payload_too_large"
    resp = await api.post("/v1/jobs", json={"image_base64": "A" * 400_000, "prompts": "x"}, headers=auth(key))
    assert resp.status == 413


@pytest.fixture
async def backend_api(backend_settings: Settings) -> AsyncIterator[TestClient]:
    """``api`` on each backend in turn (tests/conftest.py ``backend_settings``)."""
    settings = backend_settings.model_copy(update={"max_body_bytes": 200_000})
    async with TestClient(TestServer(create_app(settings))) as client:
        yield client


async def test_another_tenants_job_is_404_everywhere(backend_api: TestClient, backend_settings: Settings) -> None:
    """On Postgres and on the embedded SQLite, which has no row-level security: there the tenant
    filter of every query is all that separates tenants, and this shows it does."""
    api, key = backend_api, new_tenant(backend_settings)[1]
    job = await submit(api, key)
    _, other = new_tenant(backend_settings)
    for method, path in [
        ("GET", f"/v1/jobs/{job['id']}"),
        ("POST", f"/v1/jobs/{job['id']}/cancel"),
        ("GET", f"/v1/jobs/{job['id']}/masks/0"),
        ("GET", f"/v1/jobs/{job['id']}/masks.npz"),
    ]:
        resp = await api.request(method, path, headers=auth(other))
        assert resp.status == 404, (method, path)
        assert (await resp.json())["code"] == "job_not_found"
    listing = await (await api.get("/v1/jobs", headers=auth(other))).json()
    assert listing == {"data": [], "next_cursor": None}


async def test_list_is_newest_first_with_cursor_pages(api: TestClient, key: str) -> None:
    ids = [(await submit(api, key))["id"] for _ in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = await (await api.get(f"/v1/jobs{query}", headers=auth(key))).json()
        seen += [j["id"] for j in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    queued = await (await api.get("/v1/jobs?status=queued&limit=100", headers=auth(key))).json()
    assert len(queued["data"]) == 5
    bad = await api.get("/v1/jobs?status=bogus", headers=auth(key))
    assert bad.status == 400


async def test_cancel_a_queued_job_then_cancel_again_is_409(api: TestClient, key: str) -> None:
    job = await submit(api, key)
    resp = await api.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(key))
    body = await resp.json()
    assert resp.status == 200 and body["status"] == "canceled" and body["completed_at"]
    again = await api.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(key))
    assert again.status == 409 and (await again.json())["code"] == "job_not_cancelable"


async def test_masks_of_an_unfinished_job_are_409(api: TestClient, key: str) -> None:
    job = await submit(api, key)
    resp = await api.get(f"/v1/jobs/{job['id']}/masks/0", headers=auth(key))
    assert resp.status == 409 and (await resp.json())["code"] == "job_not_succeeded"


async def test_prefer_wait_holds_a_pending_job_for_the_time_asked(api: TestClient, key: str) -> None:
    job = await submit(api, key)
    started = time.monotonic()
    resp = await api.get(f"/v1/jobs/{job['id']}", headers={**auth(key), "Prefer": "wait=0.5"})
    elapsed = time.monotonic() - started
    assert resp.status == 200 and resp.headers["Preference-Applied"] == "wait=0.5"
    assert 0.45 <= elapsed < 3
    started = time.monotonic()  # an unknown (or another tenant's) job is a 404 at once, not after the wait
    resp = await api.get(f"/v1/jobs/{uuid.uuid4()}", headers={**auth(key), "Prefer": "wait=5"})
    assert resp.status == 404 and time.monotonic() - started < 1


async def test_prefer_wait_returns_as_soon_as_the_job_is_canceled(api: TestClient, key: str) -> None:
    job = await submit(api, key)

    async def cancel_soon() -> None:
        await asyncio.sleep(0.3)
        await api.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(key))

    task = asyncio.create_task(cancel_soon())
    started = time.monotonic()
    resp = await api.get(f"/v1/jobs/{job['id']}", headers={**auth(key), "Prefer": "wait=20"})
    await task
    assert (await resp.json())["status"] == "canceled"
    # Woken by the cancel's notification, not by the 2 s safety re-check or the 20 s limit.
    assert time.monotonic() - started < 1.5


async def test_health_readiness_and_openapi(api: TestClient) -> None:
    assert (await api.get("/healthz")).status == 200
    ready = await api.get("/readyz")
    assert ready.status == 200 and (await ready.json())["checks"] == {"database": "ok", "queue": "ok"}
    doc = await (await api.get("/openapi.json")).json()
    assert doc["openapi"] == "3.1.0"
    routes = {r.resource.canonical for r in api.app.router.routes() if r.resource is not None}  # type: ignore[union-attr]
    assert routes - {"/openapi.json"} <= set(doc["paths"])
    assert "JobPublic" in doc["components"]["schemas"]
    posts = [item["post"] for item in doc["paths"].values() if "post" in item]
    takes_key = {
        op["operationId"]: any(p["name"] == "Idempotency-Key" for p in op.get("parameters", [])) for op in posts
    }
    assert takes_key["createJob"] and takes_key["createWebhook"] and takes_key["cancelJob"]
    assert not takes_key["adminCreateKey"] and not takes_key["rotateWebhookSecret"]  # answers hold a secret


async def test_unknown_route_is_a_problem_404(api: TestClient) -> None:
    resp = await api.get("/nope")
    assert resp.status == 404 and (await resp.json())["code"] == "not_found"


async def test_delete_removes_the_job_and_everything_of_it(api: TestClient, key: str, pg_settings: Settings) -> None:
    from sqlalchemy import select

    from db.engine import make_sync_engine
    from db.models import IdempotencyKey, JobInput

    image, _ = organ_image()
    resp = await api.post("/v1/jobs", data=form(image), headers={**auth(key), "Idempotency-Key": "to-delete"})
    assert resp.status == 202
    job = await resp.json()
    _, other = new_tenant(pg_settings)
    assert (await api.delete(f"/v1/jobs/{job['id']}", headers=auth(other))).status == 404
    assert (await api.delete(f"/v1/jobs/{job['id']}", headers=auth(key))).status == 204
    assert (await api.get(f"/v1/jobs/{job['id']}", headers=auth(key))).status == 404
    assert (await api.delete(f"/v1/jobs/{job['id']}", headers=auth(key))).status == 404
    engine = make_sync_engine(pg_settings, system_scope=True)
    with engine.begin() as conn:
        assert conn.execute(select(JobInput.job_id).where(JobInput.job_id == job["id"])).first() is None
        assert conn.execute(select(IdempotencyKey.key).where(IdempotencyKey.key == "to-delete")).first() is None
    engine.dispose()
