"""Regressions found in the issue-12 review: client input that answered 5xx, and scope checks."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from medparse.settings import Settings
from tests.support.factories import new_tenant


@pytest.mark.parametrize(
    "query",
    [
        {"since": "0001-01-01T00:00:00+14:00"},  # no UTC instant: asyncpg raised OverflowError
        {"since": "9999-12-31T23:59:59-14:00"},
        {"limit": "\u00b2"},  # '²'.isdigit() is true, int('²') raises ValueError
        {"limit": "9" * 5000},  # int() refuses strings over 4300 digits
    ],
)
async def test_an_operator_audit_query_that_is_not_valid_is_a_400(pg_settings: Settings, query: dict[str, str]) -> None:
    from gateway.app import create_app

    token = "op-" + uuid.uuid4().hex + uuid.uuid4().hex
    settings = pg_settings.model_copy(
        update={"operator_token_sha256": SecretStr(hashlib.sha256(token.encode()).hexdigest())}
    )
    tenant_id, _ = new_tenant(pg_settings)
    async with TestClient(TestServer(create_app(settings))) as api:
        answer = await api.get(
            "/v1/operator/audit", params={"tenant_id": str(tenant_id), **query},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert answer.status == 400, await answer.text()
        assert (await answer.json())["code"] == "invalid_field"


#: Bodies that break multipart framing; aiohttp's reader raises a plain ValueError for each (a 500).
BROKEN_MULTIPART = {
    "no starting boundary": b"garbage\r\n",
    "another boundary": b"--abc\r\n\r\n",
    "cut short": b'--xyz\r\nContent-Disposition: form-data; name="prompts"\r\n\r\nliver',
    "junk after a boundary": b'--xyz\r\nContent-Disposition: form-data; name="image"\r\n\r\nAAAA\r\n--xyzjunk\r\n',
}


@pytest.mark.parametrize("body", BROKEN_MULTIPART.values(), ids=BROKEN_MULTIPART.keys())
async def test_a_multipart_body_with_broken_framing_is_a_400(pg_settings: Settings, body: bytes) -> None:
    from gateway.app import create_app

    _, key = new_tenant(pg_settings)
    async with TestClient(TestServer(create_app(pg_settings))) as api:
        answer = await api.post(
            "/v1/jobs", data=body,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "multipart/form-data; boundary=xyz"},
        )
        assert answer.status == 400, await answer.text()
        assert (await answer.json())["code"] == "malformed_multipart"


@pytest.mark.parametrize("url", ["http://[::1", "https://[fe80::1/hook"])
async def test_a_webhook_url_with_an_unclosed_ipv6_bracket_is_a_4xx(pg_settings: Settings, url: str) -> None:
    from gateway.app import create_app

    _, key = new_tenant(pg_settings)
    auth = {"Authorization": f"Bearer {key}"}
    async with TestClient(TestServer(create_app(pg_settings))) as api:
        endpoint = await api.post("/v1/webhooks", json={"url": url}, headers=auth)
        assert endpoint.status == 422, await endpoint.text()
        job = await api.post("/v1/jobs", json={"image_base64": "AAAA", "prompts": "liver", "webhook_url": url},
                             headers=auth)
        assert 400 <= job.status < 500, await job.text()
        assert "webhook_url" in await job.text()
