"""Webhooks through real processes: gateway, Celery worker (its dispatcher thread publishes due
deliveries, ``webhooks.deliver`` sends them), the emulator, and a real receiver on 127.0.0.1.

Receivers that answer 200, 500-then-200, 410, 302 and too slowly; every delivery is verified with
the public ``standardwebhooks`` library.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from medparse.settings import Settings
from tests.support.factories import new_tenant, organ_image
from tests.support.processes import emulator_process, service_processes
from tests.support.webhook_receiver import Receiver, running_receiver

pytestmark = pytest.mark.e2e

WEBHOOK_ENV = {
    "MEDPARSE_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
    "MEDPARSE_WEBHOOK_RETRY_SCHEDULE_S": "[0.5, 0.5]",
    "MEDPARSE_WEBHOOK_RETRY_JITTER": "0",
    "MEDPARSE_WEBHOOK_TIMEOUT_S": "1",
    "MEDPARSE_WEBHOOK_DISPATCH_INTERVAL_S": "0.2",
    "MEDPARSE_SWEEP_INTERVAL_S": "1",
}


def eventually(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout} s: {check}")
        time.sleep(0.2)


def submit_and_wait(http: httpx.Client, webhook_url: str) -> dict[str, Any]:
    image, _ = organ_image()
    resp = http.post("/v1/jobs", files={"image": ("scan.png", image, "image/png")},
                     data={"prompts": "liver & tumor", "webhook_url": webhook_url}, headers={"Prefer": "wait=30"})
    assert resp.status_code == 202, resp.text
    job = resp.json()
    deadline = time.monotonic() + 60
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        job = http.get(f"/v1/jobs/{job['id']}", headers={"Prefer": "wait=10"}).json()
    assert job["status"] == "succeeded", job
    return job  # type: ignore[no-any-return]


def check_job_url_delivery(http: httpx.Client, receiver: Receiver, job: dict[str, Any]) -> None:
    default_secret = http.get("/v1/webhooks/default/secret").json()["key"]
    (got,) = receiver.wait_for("/ok", 1)
    payload = Webhook(default_secret).verify(got.body, got.headers)
    assert payload["type"] == "job.succeeded" and payload["data"]["id"] == job["id"]
    assert payload["data"]["status"] == "succeeded" and payload["data"]["labels"][0] == "liver"
    assert payload["data"]["urls"]["masks_npz"] == job["result"]["npz_url"]
    assert len(got.body) < 20_000 and b"base64" not in got.body


def test_webhooks_end_to_end_with_postgres_redis_and_a_real_worker(pg_settings: Settings, tmp_path: Path) -> None:
    _, key = new_tenant(pg_settings)
    emulator_key = secrets.token_urlsafe(16)
    with running_receiver() as receiver, emulator_process(tmp_path, emulator_key) as emulator, service_processes(
        pg_settings, emulator, emulator_key, tmp_path, concurrency=4, **WEBHOOK_ENV
    ) as base, httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        endpoints = {}
        for path in ("/flaky/1", "/gone", "/redirect", "/slow/3"):
            resp = http.post("/v1/webhooks", json={"url": receiver.url(path), "event_types": ["job.succeeded"]})
            assert resp.status_code == 201, resp.text
            endpoints[path] = resp.json()

        job = submit_and_wait(http, receiver.url("/ok"))
        check_job_url_delivery(http, receiver, job)

        # 500 then 200: retried on the schedule with the same webhook-id, signed with the endpoint's secret.
        first, second = receiver.wait_for("/flaky/1", 2)
        assert first.headers["webhook-id"] == second.headers["webhook-id"] and first.body == second.body
        verified = Webhook(str(endpoints["/flaky/1"]["secret"])).verify(second.body, second.headers)
        assert verified["data"]["id"] == job["id"]

        # 410: the endpoint is disabled.
        gone_url = f"/v1/webhooks/{endpoints['/gone']['id']}"
        gone = eventually(lambda: (w := http.get(gone_url).json())["enabled"] is False and w)
        assert gone["disabled_reason"] == "gone" and len(receiver.requests("/gone")) == 1

        # 302: a failed attempt, never followed (the /ok hit above is the job's own delivery only).
        def redirect_attempts() -> list[dict[str, Any]]:
            data = http.get(f"/v1/webhooks/{endpoints['/redirect']['id']}/deliveries").json()["data"]
            return [a for d in data for a in d["attempts"]]

        attempt = eventually(redirect_attempts)[0]
        assert attempt["status_code"] == 302 and attempt["outcome"] == "failed"

        # A receiver that never answers in time: a timeout, retried, then failed and listed.
        def slow_failed() -> list[dict[str, Any]]:
            return http.get(f"/v1/webhooks/{endpoints['/slow/3']['id']}/deliveries?status=failed").json()["data"]

        (slow,) = eventually(slow_failed, timeout=45)
        assert [a["error"].split(":")[0] for a in slow["attempts"]] == ["timeout"] * 3
        assert "no retries left" in slow["last_error"]

        listed = http.get(f"/v1/jobs/{job['id']}/deliveries").json()["data"]
        assert len(listed) == 5 and {d["event_type"] for d in listed} == {"job.succeeded"}
        assert len(receiver.requests("/ok")) == 1

        # A manual replay sends the same webhook-id again.
        job_url_delivery = next(d for d in listed if d["target"] == "job_url")
        assert http.post(f"/v1/deliveries/{job_url_delivery['id']}/redeliver").status_code == 202
        replayed = receiver.wait_for("/ok", 2)[1]
        assert replayed.headers["webhook-id"] == job_url_delivery["webhook_id"]


def test_webhooks_end_to_end_in_the_embedded_default(embedded_settings: Settings, tmp_path: Path) -> None:
    _, key = new_tenant(embedded_settings)
    emulator_key = secrets.token_urlsafe(16)
    with running_receiver() as receiver, emulator_process(tmp_path, emulator_key) as emulator, service_processes(
        embedded_settings, emulator, emulator_key, tmp_path, concurrency=4, **WEBHOOK_ENV
    ) as base, httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        job = submit_and_wait(http, receiver.url("/ok"))
        check_job_url_delivery(http, receiver, job)
