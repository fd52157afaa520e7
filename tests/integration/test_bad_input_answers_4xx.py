"""Client input that answered 500 (issue 12): each is now a 4xx problem naming the field.

Real Postgres and Redis, real HTTP; the raw-bytes cases go over a plain socket, since an HTTP
client will not send them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr
from sqlalchemy import event, update

from db import idempotency as idempotency_repo
from db.engine import make_async_engine, make_sync_engine
from db.models import Tenant
from gateway import idempotency
from gateway.app import create_app
from gateway.webhooks.submission import WEBHOOK_POLICY, TargetPolicy
from medparse.masks import encode_mask
from medparse.settings import Settings
from runtime.cli import create_tenant
from runtime.migrate import upgrade
from tests.support.factories import new_tenant, organ_image
from tests.support.throwaway import REDIS_URL, throwaway_database, throwaway_namespace
from tests.support.webhooks import insert_job
from workers import lifecycle
from workers.pipeline import Segmentation, StoredMask

OPERATOR_TOKEN = "f" * 64


@dataclass
class Api:
    client: TestClient
    server: TestServer
    key: str
    headers: dict[str, str]
    job_id: uuid.UUID  # a succeeded 2-D job with two masks


def public_dns(host: str, port: int) -> list[str]:
    return ["93.184.216.34"]


def succeeded_2d_job(settings: Settings, tenant_id: uuid.UUID) -> uuid.UUID:
    engine = make_sync_engine(settings)
    _, job_id = insert_job(engine, settings, tenant_id)
    mask = np.zeros((240, 320), np.uint8)
    mask[10:20, 10:20] = 1
    claimed = lifecycle.claim(engine, job_id, 60)
    assert claimed is not None
    stored = [
        StoredMask(index=i, prompt=p, label=p, area_px=100, bbox=[10, 10, 20, 20], height=240, width=320,
                   data=encode_mask(mask))
        for i, p in enumerate(["liver", "tumor"])
    ]
    provenance = {"mask_encoding": "packbits-zlib1", "endpoint_http_attempts": 1, "endpoint_seconds": 0.1}
    assert lifecycle.finish(engine, claimed, Segmentation(width=320, height=240, masks=stored, provenance=provenance))
    engine.dispose()
    return job_id


@pytest.fixture(scope="module")
def shared_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """One migrated database for the module (each test has its own tenant): ~60 cases stay fast."""
    with throwaway_database() as database, throwaway_namespace() as namespace:
        settings = Settings(
            database_url=database.async_url, redis_url=REDIS_URL, redis_namespace=namespace,
            data_dir=tmp_path_factory.mktemp("var"),
            operator_token_sha256=SecretStr(hashlib.sha256(OPERATOR_TOKEN.encode()).hexdigest()),
        )
        upgrade(settings)
        yield settings


@pytest.fixture
async def api(postgres_available: None, redis_available: None, shared_settings: Settings) -> AsyncIterator[Api]:
    settings = shared_settings
    tenant_id, key = new_tenant(settings)
    engine = make_sync_engine(settings)
    with engine.begin() as conn:  # the concurrency test sends 50 requests at once
        conn.execute(update(Tenant).where(Tenant.id == tenant_id).values(rate_limit_rps=1000.0))
    engine.dispose()
    job_id = succeeded_2d_job(settings, tenant_id)
    app = create_app(settings)
    app[WEBHOOK_POLICY] = TargetPolicy(allow_private=False, resolver=public_dns)
    server = TestServer(app)
    async with TestClient(server) as client:
        yield Api(client, server, key, {"Authorization": f"Bearer {key}"}, job_id)


async def problem(resp: aiohttp.ClientResponse) -> tuple[int, str]:
    """(status, first named field) of a problem answer."""
    body = await resp.json()
    assert resp.content_type == "application/problem+json", body
    return resp.status, (body.get("fields") or [{}])[0].get("field", "")


def png_b64() -> str:
    return base64.b64encode(organ_image()[0]).decode()


# --- the cases of the issue ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"to": "0001-01-01"}, "to"),  # the default 'from' (to - 30 days) was before year 1
        ({"from": "0001-01-01T00:00:00+14:00", "to": "2020-01-01"}, "from"),  # no UTC instant
        ({"to": "9999-12-31T23:59:59-14:00"}, "to"),
    ],
)
async def test_usage_dates_out_of_range_are_400(api: Api, params: dict[str, str], field: str) -> None:
    resp = await api.client.get("/v1/usage", params=params, headers=api.headers)
    assert await problem(resp) == (400, field)


@pytest.mark.parametrize("index", ["2147483648", "99999999999999999999999", "\u0661"])
async def test_a_mask_index_beyond_int32_or_not_ascii_is_404(api: Api, index: str) -> None:
    resp = await api.client.get(f"/v1/jobs/{api.job_id}/masks/{index}", headers=api.headers)
    assert resp.status == 404 and (await resp.json())["code"] == "mask_not_found"
    ok = await api.client.get(f"/v1/jobs/{api.job_id}/masks/1", headers=api.headers)
    assert ok.status == 200 and ok.content_type == "image/png"


@pytest.mark.parametrize("value", [b"Bearer mpk_\xff\xfe_abc", b"Bearer mpk_abc_\xff", b"Bearer \xff\xfe" + b"a" * 40])
async def test_an_authorization_header_that_is_not_utf8_is_401(api: Api, value: bytes) -> None:
    reader, writer = await asyncio.open_connection(api.server.host, api.server.port)
    writer.write(b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: " + value + b"\r\nConnection: close\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), answer[:200]
    assert json.loads(body)["code"] == "unauthorized"


@pytest.mark.parametrize(
    ("window", "field"),
    [
        ("{\"center\": NaN, \"width\": 400}", "options.window.center"),
        ("{\"center\": Infinity, \"width\": 400}", "options.window.center"),
        ("{\"center\": 40, \"width\": Infinity}", "options.window.width"),
        ("{\"center\": 40, \"width\": -Infinity}", "options.window.width"),
        ("{\"center\": 40, \"width\": NaN}", "options.window.width"),
        ("{\"center\": 1e308, \"width\": 400}", "options.window.center"),
        ("{\"center\": 40, \"width\": 1e-320}", "options.window.width"),
    ],
)
async def test_non_finite_or_absurd_window_values_are_422_on_both_paths(api: Api, window: str, field: str) -> None:
    options = f"{{\"window\": {window}}}"
    as_json = f"{{\"image_base64\": \"{png_b64()}\", \"prompts\": \"liver\", \"options\": {options}}}"
    resp = await api.client.post(
        "/v1/jobs", data=as_json.encode(), headers={**api.headers, "Content-Type": "application/json"}
    )
    assert await problem(resp) == (422, field)
    form = aiohttp.FormData()
    form.add_field("image", organ_image()[0], filename="x.png", content_type="image/png")
    form.add_field("prompts", "liver")
    form.add_field("options", options)
    resp = await api.client.post("/v1/jobs", data=form, headers=api.headers)
    assert await problem(resp) == (422, field)


@pytest.mark.parametrize("description", ["a\x00b", "red\x1b[31m", "bell\x07"])
async def test_control_characters_in_a_webhook_description_are_422(api: Api, description: str) -> None:
    created = await api.client.post(
        "/v1/webhooks", json={"url": "https://hooks.example.org/x", "description": description}, headers=api.headers
    )
    assert await problem(created) == (422, "description")
    fine = await api.client.post(
        "/v1/webhooks", json={"url": "https://hooks.example.org/x", "description": "line one\n\tline two"},
        headers=api.headers,
    )
    assert fine.status == 201
    patched = await api.client.patch(
        f"/v1/webhooks/{(await fine.json())['id']}", json={"description": description}, headers=api.headers
    )
    assert await problem(patched) == (422, "description")


async def test_concurrent_submissions_with_one_idempotency_key_and_a_bad_image_are_all_4xx(api: Api) -> None:
    headers = {**api.headers, "Idempotency-Key": "same-bad-one"}
    body = {"image_base64": base64.b64encode(b"not an image at all").decode(), "prompts": "liver"}
    for _ in range(3):  # the race (a release between another's INSERT and SELECT) is timing-dependent
        responses = await asyncio.gather(*(api.client.post("/v1/jobs", json=body, headers=headers) for _ in range(50)))
        statuses = sorted(r.status for r in responses)
        assert set(statuses) <= {409, 415}, statuses
        assert 415 in statuses
        for r in responses:
            assert (await r.json())["code"] in ("idempotency_request_in_flight", "unsupported_format")
    good = await api.client.post("/v1/jobs", json={"image_base64": png_b64(), "prompts": "liver"}, headers=headers)
    assert good.status == 202  # every failure released the key


async def test_reserve_claims_a_key_released_between_its_insert_and_its_select(pg_settings: Settings) -> None:
    """The race behind the 500s, made certain: the holder of the key releases it right after our
    INSERT found it taken, before our SELECT reads it (that SELECT found nothing: NoResultFound)."""
    tenant_id, _ = new_tenant(pg_settings)
    other = make_sync_engine(pg_settings, system_scope=True)
    now = datetime.now(UTC)
    with other.begin() as conn:
        conn.execute(idempotency_repo.reserve_stmt(
            "postgresql", tenant_id, "k", "fp", now=now, locked_until=now + timedelta(seconds=60)
        ))
    engine = make_async_engine(pg_settings)
    released: list[str] = []

    def release_after_the_insert(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("INSERT INTO idempotency_keys") and not released:
            with other.begin() as side:
                side.execute(idempotency_repo.release_stmt(tenant_id, "k"))
            released.append(statement)

    event.listen(engine.sync_engine, "after_cursor_execute", release_after_the_insert)
    try:
        outcome = await idempotency.reserve(engine, pg_settings, tenant_id, "k", "fp")
    finally:
        await engine.dispose()
        other.dispose()
    assert released, "the INSERT never ran"
    assert isinstance(outcome, idempotency.Reservation)  # the key was free again: this request holds it


@pytest.mark.parametrize("prompts", ["liv\x00er", "liver\x01", "liver\x7f", "liver & \x1b[2Jkidney"])
async def test_control_characters_in_prompts_are_422_at_submit(api: Api, prompts: str) -> None:
    resp = await api.client.post("/v1/jobs", json={"image_base64": png_b64(), "prompts": prompts}, headers=api.headers)
    assert await problem(resp) == (422, "prompts")
    listed = await api.client.post(
        "/v1/jobs", json={"image_base64": png_b64(), "prompts": [prompts.replace("&", "")]}, headers=api.headers
    )
    assert await problem(listed) == (422, "prompts")
    form = aiohttp.FormData()
    form.add_field("image", organ_image()[0], filename="x.png", content_type="image/png")
    form.add_field("prompts", prompts)
    resp = await api.client.post("/v1/jobs", data=form, headers=api.headers)
    assert await problem(resp) == (422, "prompts")
    jobs = await (await api.client.get("/v1/jobs", headers=api.headers)).json()
    assert [j["id"] for j in jobs["data"]] == [str(api.job_id)]  # nothing was accepted


@pytest.mark.parametrize("url", ["https://hooks.example.org/\u2028x", "https://hooks.example.org/a b", "https://hooks.example.org/\x00"])
async def test_whitespace_and_control_characters_in_webhook_urls_are_422(api: Api, url: str) -> None:
    registered = await api.client.post("/v1/webhooks", json={"url": url}, headers=api.headers)
    assert await problem(registered) == (422, "url")
    job = await api.client.post(
        "/v1/jobs", json={"image_base64": png_b64(), "prompts": "liver", "webhook_url": url}, headers=api.headers
    )
    assert await problem(job) == (422, "webhook_url")
    form = aiohttp.FormData()
    form.add_field("image", organ_image()[0], filename="x.png", content_type="image/png")
    form.add_field("prompts", "liver")
    form.add_field("webhook_url", url)
    job = await api.client.post("/v1/jobs", data=form, headers=api.headers)
    assert await problem(job) == (422, "webhook_url")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"format": "png", "slice": "99999999999999999999"}, "slice"),  # was silently ignored
        ({"format": "png", "slice": "1"}, "slice"),  # a 2-D result has no slices
        ({"format": "overlay", "slice": "0"}, "slice"),
        ({"format": "npz", "slice": "0"}, "slice"),  # slice applies to png and overlay only
        ({"format": "png", "slice": "-1"}, "slice"),
        ({"format": "png", "mask": "2147483648"}, "mask"),
        ({"format": "png", "mask": "99999999999999999999"}, "mask"),
        ({"format": "png", "mask": "1_0"}, "mask"),
        ({"format": "png", "mask": "\u0661"}, "mask"),
    ],
)
async def test_result_query_values_out_of_range_are_400(api: Api, query: dict[str, str], field: str) -> None:
    resp = await api.client.get(f"/v1/jobs/{api.job_id}/result", params=query, headers=api.headers)
    assert await problem(resp) == (400, field)


# --- found by hunting the same way ------------------------------------------------------------------


def forged_cursor(instant: str) -> str:
    return base64.urlsafe_b64encode(f"{instant}|{uuid.uuid4()}".encode()).decode().rstrip("=")


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/deliveries"])
@pytest.mark.parametrize(
    "cursor", [forged_cursor("0001-01-01T00:00:00+14:00"), forged_cursor("9999-12-31T23:59:59-14:00"), "A" * 5000]
)
async def test_a_forged_cursor_is_400(api: Api, path: str, cursor: str) -> None:
    resp = await api.client.get(path, params={"cursor": cursor}, headers=api.headers)
    assert await problem(resp) == (400, "cursor")


@pytest.mark.parametrize("limit", ["\u0661", "1_0", " 5", "99999999999999999999999"])
async def test_page_limits_are_ascii_integers_in_range(api: Api, limit: str) -> None:
    resp = await api.client.get("/v1/jobs", params={"limit": limit}, headers=api.headers)
    assert await problem(resp) == (400, "limit")


@pytest.mark.parametrize("wait", ["nan", "inf", "-inf", "1e999"])
async def test_prefer_wait_must_be_finite(api: Api, wait: str) -> None:
    resp = await api.client.get(f"/v1/jobs/{api.job_id}", headers={**api.headers, "Prefer": f"wait={wait}"})
    assert await problem(resp) == (400, "Prefer")


@pytest.mark.parametrize(
    "body",
    [
        {"expires_at": "0001-01-01T00:00:00+14:00"},  # asyncpg: OverflowError shifting it to UTC
        {"expires_at": "9999-12-31T23:59:59-14:00"},
        {"label": "ops\x00"},
        {"label": "\x1b]0;pwned\x07"},
    ],
)
async def test_key_fields_that_cannot_be_stored_are_422(api: Api, body: dict[str, str]) -> None:
    tenant = await (await api.client.get("/v1/usage", headers=api.headers)).json()
    resp = await api.client.post(
        f"/v1/admin/tenants/{tenant['tenant_id']}/keys", json={"scopes": ["jobs:read"], **body},
        headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
    )
    assert await problem(resp) == (422, next(iter(body)))


async def test_an_expiry_in_range_is_kept_as_given(api: Api) -> None:
    tenant = await (await api.client.get("/v1/usage", headers=api.headers)).json()
    when = datetime.now(UTC) + timedelta(days=1)
    resp = await api.client.post(
        f"/v1/admin/tenants/{tenant['tenant_id']}/keys",
        json={"expires_at": when.astimezone(UTC).isoformat()}, headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
    )
    assert resp.status == 201
    assert datetime.fromisoformat((await resp.json())["expires_at"]) == when


@pytest.mark.parametrize("key", ["caf\u00e9", "a\tb"])
async def test_an_idempotency_key_is_printable_ascii(api: Api, key: str) -> None:
    resp = await api.client.post(
        "/v1/jobs", json={"image_base64": png_b64(), "prompts": "liver"},
        headers={**api.headers, "Idempotency-Key": key},
    )
    assert await problem(resp) == (400, "Idempotency-Key")


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ('{"frame": 2147483648}', "options.frame"),
        ('{"slices": [99999999999999999999999]}', "options.slices.0"),
        ('{"slices": {"start": 0, "stop": 99999999999999999999999}}', "options.slices.stop"),
    ],
)
async def test_huge_indexes_in_options_are_422_naming_them(api: Api, options: str, field: str) -> None:
    body = f"{{\"image_base64\": \"{png_b64()}\", \"prompts\": \"liver\", \"options\": {options}}}"
    resp = await api.client.post(
        "/v1/jobs", data=body.encode(), headers={**api.headers, "Content-Type": "application/json"}
    )
    status, named = await problem(resp)
    assert status == 422 and named.startswith(field), (named, field)


async def test_hostile_path_values_on_every_route_are_4xx(api: Api, shared_settings: Settings) -> None:
    """Every route with a path parameter, each parameter in turn NUL-bearing, non-UTF-8, huge or
    beyond int32, by a tenant key holding every scope and by the operator."""
    everything = new_key(shared_settings, ["jobs:read", "jobs:write", "admin"])
    callers = {"tenant": {"Authorization": f"Bearer {everything}"},
               "operator": {"Authorization": f"Bearer {OPERATOR_TOKEN}"}}
    hostile = ["a%00b", "%FF%FE", "9" * 3000, "2147483648", "-1", "%E2%80%AE"]
    routes = [r for r in api.client.app.router.routes() if "{" in r.resource.canonical and r.method != "HEAD"]
    assert len(routes) >= 15
    failures, sent = [], 0
    for route in routes:
        names = re.findall(r"{(\w+)}", route.resource.canonical)
        for name in names:
            for value in hostile:
                path = route.resource.canonical
                for other in names:
                    path = path.replace(f"{{{other}}}", value if other == name else str(uuid.uuid4()))
                for who, headers in callers.items():
                    resp = await api.client.request(route.method, path, headers=headers, json={})
                    sent += 1
                    if not 400 <= resp.status < 500:
                        failures.append(f"{who} {route.method} {path[:80]}: {resp.status}")
    assert not failures, "\n".join(failures)
    assert sent >= 15 * len(hostile) * len(callers)


def new_key(settings: Settings, scopes: list[str]) -> str:
    """A tenant of its own with one key holding ``scopes``."""
    return create_tenant(settings, f"paths-{uuid.uuid4().hex[:8]}", scopes=scopes)[1]
