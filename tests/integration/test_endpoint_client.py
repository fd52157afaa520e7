"""EndpointClient over real HTTP: the emulator for conformance, a scripted server for exact sequences."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import cv2
import httpx
import numpy as np
import orjson
import pybase64
import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestServer

from emulator.config import EmulatorConfig
from medparse.endpoint import (
    EndpointAuthFailed,
    EndpointBadResponse,
    EndpointClient,
    EndpointNotFound,
    EndpointRejectedInput,
    EndpointTimeout,
    EndpointUnavailable,
    LocalInFlightLimiter,
    RedisInFlightLimiter,
    ScoreRow,
    in_flight_limit,
)
from medparse.endpoint.auth import AadTokenProvider
from medparse.endpoint.protocol import split_prompts
from medparse.settings import EndpointAuthMode, Settings
from tests.support.emulator_server import running_emulator
from tests.support.ports import free_port
from tests.support.throwaway import REDIS_URL

KEY = "test-key-" + uuid.uuid4().hex[:8]
MODEL_STATUS = "ms-azureml-model-error-statuscode"
MODEL_REASON = "ms-azureml-model-error-reason"


def png(width: int = 96, height: int = 64, *, seed: int = 0) -> bytes:
    """A dark image with one bright ellipse, as lossless PNG."""
    img = np.full((height, width), 20, np.uint8)
    cv2.ellipse(img, (width // 2, height // 2), (width // 4, height // 4), 0, 0, 360, 220, -1)
    img = np.clip(img + np.random.default_rng(seed).normal(0, 2, img.shape), 0, 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".png", img)
    assert ok
    return encoded.tobytes()


def endpoint_settings(scoring_uri: str, **overrides: Any) -> Settings:
    """Client settings with short backoff so retry tests finish in milliseconds."""
    values: dict[str, Any] = {
        "endpoint_scoring_uri": scoring_uri,
        "endpoint_key": KEY,
        "endpoint_backoff_min_s": 0.01,
        "endpoint_backoff_max_s": 0.05,
        "endpoint_max_attempts": 4,
        "endpoint_max_total_s": 30.0,
        "endpoint_connect_timeout_s": 2.0,
        "endpoint_read_timeout_s": 10.0,
    }
    values.update(overrides)
    return Settings(**values)


def make_client(settings: Settings, **kwargs: Any) -> EndpointClient:
    kwargs.setdefault("limiter", LocalInFlightLimiter(in_flight_limit(settings)))
    return EndpointClient(settings, **kwargs)


ROWS = [ScoreRow(png(seed=1), ["liver", "left kidney"]), ScoreRow(png(80, 80, seed=2), ["tumor"])]


# --- the emulator -------------------------------------------------------------------------------


class Admin:
    """The emulator's admin API."""

    def __init__(self, base_url: str, key: str = KEY) -> None:
        self._http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"})

    def stats(self) -> dict[str, Any]:
        response = self._http.get("/_emulator/stats")
        response.raise_for_status()
        return dict(response.json())

    def patch(self, **knobs: Any) -> None:
        self._http.post("/_emulator/config", json=knobs).raise_for_status()

    def close(self) -> None:
        self._http.close()


@pytest.fixture
def emulator(request: pytest.FixtureRequest) -> Iterator[tuple[str, Admin]]:
    """A running emulator; parametrize indirectly with EmulatorConfig keyword arguments."""
    knobs: dict[str, Any] = {"keys": [KEY], "seed": 7}
    knobs.update(getattr(request, "param", {}))
    with running_emulator(EmulatorConfig(**knobs)) as base_url:
        admin = Admin(base_url)
        yield base_url, admin
        admin.close()


def test_rows_come_back_as_masks_of_the_image_size_with_one_label_per_prompt(
    emulator: tuple[str, Admin],
) -> None:
    base_url, admin = emulator
    with make_client(endpoint_settings(f"{base_url}/score")) as client:
        result = client.score(ROWS, job_id="job-happy")

    first, second = result.rows
    assert first.masks.shape == (2, 64, 96) and second.masks.shape == (1, 80, 80)
    assert first.masks.dtype == np.uint8 and len(first.labels) == 2 and len(second.labels) == 1
    assert first.masks.max() >= 128, "the bright ellipse is found"
    assert result.attempts == 1 and result.seconds > 0
    assert result.server_request_id
    stats = admin.stats()
    assert stats["status_counts"] == {"200": 1}
    assert stats["rows_scored"] == 2 and stats["prompts_scored"] == 3


def test_client_request_id_and_pinned_deployment_reach_the_endpoint(emulator: tuple[str, Admin]) -> None:
    base_url, admin = emulator
    settings = endpoint_settings(f"{base_url}/score", endpoint_deployment="medimageparse")
    with make_client(settings) as client:
        first = client.score(ROWS[:1], job_id="job-a")
        second = client.score(ROWS[:1], job_id="job-b")

    stats = admin.stats()
    assert stats["client_request_ids"] == [first.client_request_id, second.client_request_id]
    assert first.client_request_id != second.client_request_id
    assert uuid.UUID(first.client_request_id).version == 4
    assert stats["deployment_counts"] == {"medimageparse": 2}


@pytest.mark.parametrize("emulator", [{"deployments": {"blue": 100, "green": 0}}], indirect=True)
def test_the_deployment_header_routes_even_to_a_deployment_without_traffic(
    emulator: tuple[str, Admin],
) -> None:
    base_url, admin = emulator
    with make_client(endpoint_settings(f"{base_url}/score", endpoint_deployment="green")) as client:
        client.score(ROWS[:1], job_id="job-green")

    assert admin.stats()["deployment_counts"] == {"green": 1}


def test_an_unknown_deployment_is_not_found_without_retry(emulator: tuple[str, Admin]) -> None:
    base_url, admin = emulator
    with make_client(endpoint_settings(f"{base_url}/score", endpoint_deployment="nope")) as client:
        with pytest.raises(EndpointNotFound) as info:
            client.score(ROWS, job_id="job-404")

    assert info.value.attempts == 1 and info.value.status == 404
    assert admin.stats()["status_counts"] == {"404": 1}


def test_a_wrong_key_is_refreshed_once_then_fails_as_auth(emulator: tuple[str, Admin]) -> None:
    base_url, admin = emulator
    with make_client(endpoint_settings(f"{base_url}/score", endpoint_key="wrong")) as client:
        with pytest.raises(EndpointAuthFailed) as info:
            client.score(ROWS, job_id="job-401")

    assert info.value.code == "endpoint_auth_failed" and info.value.attempts == 2
    assert admin.stats()["status_counts"] == {"401": 2}


class RotatingKey:
    """A provider whose first value is stale; a forced refresh yields the valid one."""

    def __init__(self, stale: str, fresh: str) -> None:
        self.value, self._fresh = stale, fresh
        self.forced = 0

    def bearer(self, *, force_refresh: bool = False) -> str:
        if force_refresh:
            self.forced += 1
            self.value = self._fresh
        return self.value


def test_a_401_refreshes_the_credential_and_the_retry_succeeds(emulator: tuple[str, Admin]) -> None:
    base_url, admin = emulator
    provider = RotatingKey("revoked", KEY)
    with make_client(endpoint_settings(f"{base_url}/score"), credential=provider) as client:
        result = client.score(ROWS, job_id="job-rotated")

    assert result.attempts == 2 and provider.forced == 1
    assert admin.stats()["status_counts"] == {"200": 1, "401": 1}


def test_a_model_rejection_carries_the_models_reason_without_retry(emulator: tuple[str, Admin]) -> None:
    base_url, admin = emulator
    not_png = ScoreRow(b"GIF89a" + bytes(64), ["liver"])
    with make_client(endpoint_settings(f"{base_url}/score")) as client:
        with pytest.raises(EndpointRejectedInput) as info:
            client.score([not_png], job_id="job-424-400")

    assert info.value.status == 424 and info.value.attempts == 1
    assert "PNG" in info.value.message and "model status 400" in info.value.message
    assert admin.stats()["status_counts"] == {"424": 1}


@pytest.mark.parametrize("emulator", [{"fault_rates": {424: 1.0}}], indirect=True)
def test_a_model_failure_is_retried_only_within_the_424_budget(emulator: tuple[str, Admin]) -> None:
    base_url, admin = emulator
    settings = endpoint_settings(f"{base_url}/score", endpoint_max_attempts=6, endpoint_max_424_attempts=2)
    with make_client(settings) as client:
        with pytest.raises(EndpointUnavailable) as info:
            client.score(ROWS, job_id="job-424-500")

    assert info.value.attempts == 2 and "model status 500" in info.value.message
    assert admin.stats()["status_counts"] == {"424": 2}


@pytest.mark.parametrize("emulator", [{"request_timeout_ms": 50, "latency_ms": 200}], indirect=True)
def test_a_model_timeout_is_surfaced_at_once(emulator: tuple[str, Admin]) -> None:
    base_url, admin = emulator
    with make_client(endpoint_settings(f"{base_url}/score")) as client:
        with pytest.raises(EndpointTimeout) as info:
            client.score(ROWS, job_id="job-408")

    assert info.value.status == 408 and info.value.attempts == 1
    assert "request_timeout_ms" in info.value.message
    assert admin.stats()["status_counts"] == {"408": 1}


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_transient_faults_are_retried_until_attempts_run_out(status: int) -> None:
    config = EmulatorConfig(keys=[KEY], fault_rates={status: 1.0})
    with running_emulator(config) as base_url, make_client(endpoint_settings(f"{base_url}/score")) as client:
        admin = Admin(base_url)
        with pytest.raises(EndpointUnavailable) as info:
            client.score(ROWS, job_id=f"job-{status}")
        stats = admin.stats()
        admin.close()

    assert info.value.attempts == 4 and info.value.status == status
    assert stats["status_counts"] == {str(status): 4}
    assert len(set(stats["client_request_ids"])) == 1, "one client request id for all attempts of a call"


@pytest.mark.parametrize("emulator", [{"fault_rates": {500: 0.3, 502: 0.2, 503: 0.2}}], indirect=True)
def test_intermittent_faults_are_absorbed_by_retries(emulator: tuple[str, Admin]) -> None:
    base_url, admin = emulator
    settings = endpoint_settings(f"{base_url}/score", endpoint_max_attempts=30)
    with make_client(settings) as client:
        results = [client.score(ROWS[:1], job_id=f"job-flaky-{i}") for i in range(8)]

    counts = admin.stats()["status_counts"]
    assert counts["200"] == 8
    assert sum(r.attempts for r in results) == sum(counts.values())
    assert sum(counts.values()) > 8, "the seeded faults did hit"


@pytest.mark.parametrize(
    "emulator",
    [{"max_concurrent_requests_per_instance": 1, "instance_count": 2, "latency_ms": 60}],
    indirect=True,
)
def test_threads_sharing_a_client_and_a_redis_cap_never_overrun_the_deployment(
    emulator: tuple[str, Admin], redis_namespace: str
) -> None:
    base_url, admin = emulator
    settings = endpoint_settings(
        f"{base_url}/score", endpoint_max_concurrent_per_instance=1, endpoint_instance_count=2,
        endpoint_in_flight_headroom=0.0,
    )
    redis_client = redis.Redis.from_url(REDIS_URL)
    limiter = RedisInFlightLimiter(redis_client, f"{redis_namespace}:in_flight", in_flight_limit(settings))
    errors: list[BaseException] = []

    with make_client(settings, limiter=limiter) as client:

        def work(i: int) -> None:
            try:
                for j in range(3):
                    client.score(ROWS[:1], job_id=f"job-{i}-{j}")
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    limiter.close()
    redis_client.close()

    stats = admin.stats()
    assert not errors
    assert stats["status_counts"] == {"200": 18}, "no 429: the cap kept us under the pending limit"
    assert stats["max_in_flight"] == 2


def test_connection_refused_is_retried_then_unavailable() -> None:
    settings = endpoint_settings(f"http://127.0.0.1:{free_port()}/score")
    with make_client(settings) as client:
        with pytest.raises(EndpointUnavailable) as info:
            client.score(ROWS, job_id="job-refused")

    assert info.value.attempts == 4 and info.value.status is None
    assert "ConnectError" in info.value.message


# --- aad_token through the emulator's managed-identity route ------------------------------------------


class TokenCounter:
    """Counts tokens the emulator issues by wrapping its issuer (the emulator runs in this process)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from emulator.tokens import TokenIssuer

        self.issued = 0
        original = TokenIssuer.issue

        def counting(issuer: TokenIssuer, *args: Any, **kwargs: Any) -> Any:
            self.issued += 1
            return original(issuer, *args, **kwargs)

        monkeypatch.setattr(TokenIssuer, "issue", counting)


@pytest.fixture
def managed_identity(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, TokenCounter, Admin]]:
    """An aad_token emulator whose token route DefaultAzureCredential finds through the environment."""
    secret = uuid.uuid4().hex
    for name in (
        "AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH",
        "AZURE_USERNAME", "AZURE_FEDERATED_TOKEN_FILE", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT",
        "IDENTITY_SERVER_THUMBPRINT",
    ):
        monkeypatch.delenv(name, raising=False)
    counter = TokenCounter(monkeypatch)
    config = EmulatorConfig(keys=[KEY], auth_mode="aad_token", identity_header=secret, token_ttl_s=120)
    with running_emulator(config) as base_url:
        monkeypatch.setenv("IDENTITY_ENDPOINT", f"{base_url}/msi/token")
        monkeypatch.setenv("IDENTITY_HEADER", secret)
        admin = Admin(base_url)
        yield base_url, counter, admin
        admin.close()


def aad_settings(base_url: str, **overrides: Any) -> Settings:
    return endpoint_settings(
        f"{base_url}/score", endpoint_auth_mode=EndpointAuthMode.aad_token, endpoint_key=None, **overrides
    )


def test_aad_tokens_come_from_the_default_credential_and_are_reused(
    managed_identity: tuple[str, TokenCounter, Admin],
) -> None:
    base_url, counter, admin = managed_identity
    # A 120 s token is inside MSAL's own 5-minute refresh window, so only our cache can save fetches.
    with make_client(aad_settings(base_url, endpoint_token_refresh_margin_s=10)) as client:
        for i in range(4):
            client.score(ROWS[:1], job_id=f"job-aad-{i}")

    assert counter.issued == 1
    assert admin.stats()["status_counts"] == {"200": 4}


def test_aad_tokens_are_refreshed_before_they_expire(
    managed_identity: tuple[str, TokenCounter, Admin],
) -> None:
    base_url, counter, admin = managed_identity
    admin.patch(token_ttl_s=3)
    with make_client(aad_settings(base_url, endpoint_token_refresh_margin_s=1)) as client:
        client.score(ROWS[:1], job_id="job-aad-1")
        client.score(ROWS[:1], job_id="job-aad-2")
        assert counter.issued == 1
        time.sleep(2.5)
        client.score(ROWS[:1], job_id="job-aad-3")

    assert counter.issued == 2
    assert admin.stats()["status_counts"] == {"200": 3}


def test_a_forced_aad_refresh_fetches_a_new_token(managed_identity: tuple[str, TokenCounter, Admin]) -> None:
    _, counter, _ = managed_identity
    provider = AadTokenProvider(
        "https://ml.azure.com/.default", refresh_margin_s=10, min_forced_interval_s=0.0
    )

    first = provider.bearer()
    again = provider.bearer()
    forced = provider.bearer(force_refresh=True)
    provider.close()

    assert first == again != forced
    assert counter.issued == 2


# --- a scripted server: exact answer sequences ---------------------------------------------------------


@dataclass
class Canned:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    #: None on a 200: a valid answer for whatever was sent
    body: bytes | None = None
    delay_s: float = 0.0


@dataclass
class Seen:
    headers: dict[str, str]
    body: bytes


def valid_answer(request_body: bytes) -> bytes:
    rows = orjson.loads(request_body)["input_data"]["data"]
    items = []
    for _, text in rows:
        n = len(split_prompts(text))
        masks = np.full((n, 4, 5), 200, np.uint8)
        meta = {"data": pybase64.b64encode_as_string(masks.tobytes()), "shape": [n, 4, 5], "dtype": "uint8"}
        items.append({"image_features": orjson.dumps(meta).decode(), "text_features": ["liver"] * n})
    return orjson.dumps(items)


class ScriptedEndpoint:
    """Answers /score from a script of canned responses (then 200s), recording every request."""

    def __init__(self, script: list[Canned]) -> None:
        self.script = deque(script)
        self.seen: list[Seen] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append(Seen({k.lower(): v for k, v in request.headers.items()}, body))
        canned = self.script.popleft() if self.script else Canned()
        if canned.delay_s:
            await asyncio.sleep(canned.delay_s)
        payload = canned.body
        if payload is None:
            payload = valid_answer(body) if canned.status == 200 else b'{"message": "canned"}'
        return web.Response(
            status=canned.status, body=payload, headers=canned.headers, content_type="application/json"
        )


@asynccontextmanager
async def scripted(*script: Canned) -> AsyncIterator[tuple[ScriptedEndpoint, str]]:
    endpoint = ScriptedEndpoint(list(script))
    app = web.Application()
    app.router.add_post("/score", endpoint.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield endpoint, str(server.make_url("/score"))
    finally:
        await server.close()


class Sleeps:
    """An injected sleep that only records, so backoff costs no wall time."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


async def test_every_attempt_carries_the_documented_headers() -> None:
    async with scripted(Canned(503), Canned()) as (endpoint, uri):
        settings = endpoint_settings(uri, endpoint_deployment="blue")
        with make_client(settings, sleep=Sleeps()) as client:
            result = await asyncio.to_thread(client.score, ROWS, job_id="job-headers")

    assert result.attempts == 2 and len(endpoint.seen) == 2
    for seen in endpoint.seen:
        assert seen.headers["content-type"] == "application/json"
        assert seen.headers["authorization"] == f"Bearer {KEY}"
        assert seen.headers["azureml-model-deployment"] == "blue"
        assert seen.headers["x-ms-client-request-id"] == result.client_request_id
    body = orjson.loads(endpoint.seen[0].body)
    assert body["input_data"]["columns"] == ["image", "text"] and body["input_data"]["index"] == [0, 1]
    assert body["input_data"]["data"][0][1] == "liver & left kidney"


async def test_no_deployment_header_is_sent_unless_one_is_pinned() -> None:
    async with scripted(Canned()) as (endpoint, uri):
        with make_client(endpoint_settings(uri)) as client:
            await asyncio.to_thread(client.score, ROWS, job_id="job-unpinned")

    assert "azureml-model-deployment" not in endpoint.seen[0].headers


async def test_server_errors_then_success_returns_with_the_attempt_count() -> None:
    script = [Canned(500), Canned(502), Canned(503), Canned(504), Canned()]
    sleeps = Sleeps()
    async with scripted(*script) as (endpoint, uri):
        with make_client(endpoint_settings(uri, endpoint_max_attempts=5), sleep=sleeps) as client:
            result = await asyncio.to_thread(client.score, ROWS, job_id="job-5xx")

    assert result.attempts == 5 and len(endpoint.seen) == 5
    assert [r.masks.shape for r in result.rows] == [(2, 4, 5), (1, 4, 5)]
    assert len(sleeps.calls) == 4
    assert all(0.01 <= s <= min(0.05, 0.01 * 2**k) for k, s in enumerate(sleeps.calls))


async def test_a_429_waits_as_long_as_retry_after_says_up_to_the_cap() -> None:
    sleeps = Sleeps()
    script = [Canned(429, {"Retry-After": "0.03"}), Canned(429, {"Retry-After": "120"}), Canned()]
    async with scripted(*script) as (endpoint, uri):
        with make_client(endpoint_settings(uri), sleep=sleeps) as client:
            result = await asyncio.to_thread(client.score, ROWS, job_id="job-429")

    assert result.attempts == 3
    assert sleeps.calls == [0.03, 0.05]


async def test_exhausted_retries_report_unavailable_with_the_last_status() -> None:
    async with scripted(*[Canned(503)] * 10) as (endpoint, uri):
        with make_client(endpoint_settings(uri, endpoint_max_attempts=3), sleep=Sleeps()) as client:
            with pytest.raises(EndpointUnavailable) as info:
                await asyncio.to_thread(client.score, ROWS, job_id="job-exhausted")

    assert len(endpoint.seen) == 3 and info.value.attempts == 3 and info.value.status == 503
    assert len({s.headers["x-ms-client-request-id"] for s in endpoint.seen}) == 1
    assert info.value.client_request_id == endpoint.seen[0].headers["x-ms-client-request-id"]


async def test_a_424_with_inner_500_is_retried_and_can_succeed() -> None:
    async with scripted(Canned(424, {MODEL_STATUS: "500", MODEL_REASON: "CUDA OOM"}), Canned()) as (
        endpoint,
        uri,
    ):
        with make_client(endpoint_settings(uri), sleep=Sleeps()) as client:
            result = await asyncio.to_thread(client.score, ROWS, job_id="job-424-retry")

    assert result.attempts == 2


async def test_a_424_with_inner_400_is_not_retried() -> None:
    async with scripted(Canned(424, {MODEL_STATUS: "400", MODEL_REASON: "text has an empty prompt"})) as (
        endpoint,
        uri,
    ):
        with make_client(endpoint_settings(uri), sleep=Sleeps()) as client:
            with pytest.raises(EndpointRejectedInput) as info:
                await asyncio.to_thread(client.score, ROWS, job_id="job-424-final")

    assert len(endpoint.seen) == 1 and "text has an empty prompt" in info.value.message


@pytest.mark.parametrize("status", [400, 413, 422])
async def test_plain_4xx_are_rejected_input_without_retry(status: int) -> None:
    async with scripted(Canned(status, body=b'{"message": "too big"}')) as (endpoint, uri):
        with make_client(endpoint_settings(uri), sleep=Sleeps()) as client:
            with pytest.raises(EndpointRejectedInput) as info:
                await asyncio.to_thread(client.score, ROWS, job_id="job-4xx")

    assert len(endpoint.seen) == 1 and "too big" in info.value.message


async def test_a_408_is_not_retried() -> None:
    async with scripted(Canned(408)) as (endpoint, uri):
        with make_client(endpoint_settings(uri), sleep=Sleeps()) as client:
            with pytest.raises(EndpointTimeout):
                await asyncio.to_thread(client.score, ROWS, job_id="job-408")

    assert len(endpoint.seen) == 1


async def test_read_timeouts_are_retried_then_reported_as_timeout() -> None:
    async with scripted(Canned(delay_s=1.0), Canned(delay_s=1.0)) as (endpoint, uri):
        settings = endpoint_settings(uri, endpoint_read_timeout_s=0.2, endpoint_max_attempts=2)
        with make_client(settings, sleep=Sleeps()) as client:
            with pytest.raises(EndpointTimeout) as info:
                await asyncio.to_thread(client.score, ROWS, job_id="job-read-timeout")

    assert info.value.attempts == 2 and len(endpoint.seen) == 2


async def test_a_read_timeout_then_an_answer_succeeds() -> None:
    async with scripted(Canned(delay_s=1.0), Canned()) as (endpoint, uri):
        settings = endpoint_settings(uri, endpoint_read_timeout_s=0.2)
        with make_client(settings, sleep=Sleeps()) as client:
            result = await asyncio.to_thread(client.score, ROWS, job_id="job-slow-once")

    assert result.attempts == 2


async def test_a_malformed_answer_is_a_bad_response_without_retry() -> None:
    async with scripted(Canned(body=b'[{"image_features": "{}"}]')) as (endpoint, uri):
        with make_client(endpoint_settings(uri), sleep=Sleeps()) as client:
            with pytest.raises(EndpointBadResponse) as info:
                await asyncio.to_thread(client.score, ROWS, job_id="job-bad")

    assert len(endpoint.seen) == 1 and info.value.attempts == 1 and info.value.client_request_id


async def test_the_total_time_budget_ends_the_call_early() -> None:
    async with scripted(*[Canned(503, {"Retry-After": "1"})] * 10) as (endpoint, uri):
        settings = endpoint_settings(
            uri, endpoint_max_attempts=10, endpoint_max_total_s=0.5, endpoint_backoff_max_s=1.0
        )
        with make_client(settings) as client:
            started = time.monotonic()
            with pytest.raises(EndpointUnavailable) as info:
                await asyncio.to_thread(client.score, ROWS, job_id="job-budget")

    assert time.monotonic() - started < 0.5
    assert len(endpoint.seen) == 1 and "endpoint_max_total_s" in info.value.message


async def test_the_in_flight_slot_is_released_while_backing_off() -> None:
    limiter = LocalInFlightLimiter(1)
    free_during_backoff: list[bool] = []

    def sleep(seconds: float) -> None:
        try:
            with limiter.slot(timeout=0):
                free_during_backoff.append(True)
        except TimeoutError:
            free_during_backoff.append(False)

    async with scripted(Canned(503), Canned(502), Canned()) as (endpoint, uri):
        with make_client(endpoint_settings(uri), limiter=limiter, sleep=sleep) as client:
            await asyncio.to_thread(client.score, ROWS, job_id="job-slot")

    assert free_during_backoff == [True, True]


async def test_a_busy_in_flight_cap_ends_in_unavailable_when_the_budget_runs_out() -> None:
    limiter = LocalInFlightLimiter(1)
    async with scripted() as (endpoint, uri):
        with make_client(endpoint_settings(uri, endpoint_max_total_s=0.2), limiter=limiter) as client:
            with limiter.slot():
                with pytest.raises(EndpointUnavailable) as info:
                    await asyncio.to_thread(client.score, ROWS, job_id="job-no-slot")

    assert not endpoint.seen and "in-flight slot" in info.value.message and info.value.attempts == 0
