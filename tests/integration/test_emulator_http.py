"""The endpoint emulator over HTTP: wire protocol, auth, routing, operational limits, admin API, and the
managed-identity token route driven by the real azure-identity credential."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
from PIL import Image

from emulator.app import create_emulator_app
from emulator.categories import BIOMED_CLASSES
from emulator.config import EmulatorConfig
from tests.support.emulator_server import running_emulator

KEY = "test-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}
IDENTITY_SECRET = "identity-header-secret"

MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


def ct_like(side: int = 128) -> np.ndarray:
    image = np.zeros((side, side), np.uint8)
    cv2.circle(image, (side // 2, side // 2), side // 3, 150, thickness=-1)
    return image


def encode_png(image: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", image)
    assert ok
    return buffer.tobytes()


def b64(raw: bytes, *, newlines: bool = False) -> str:
    # The official samples send base64.encodebytes output (newline every 76 chars); batch ones b64encode.
    return (base64.encodebytes(raw) if newlines else base64.b64encode(raw)).decode("utf-8")


def envelope(*rows: tuple[str, str], **extra: Any) -> dict[str, Any]:
    data = [list(row) for row in rows]
    return {
        "input_data": {"columns": ["image", "text"], "index": list(range(len(data))), "data": data},
        **extra,
    }


def one_row(prompts: str = "liver & tumor", image: np.ndarray | None = None) -> dict[str, Any]:
    return envelope((b64(encode_png(ct_like() if image is None else image)), prompts))


def decode_like_official_samples(item: dict[str, Any]) -> np.ndarray:
    """``_decode_image_features`` of healthcareai_toolkit / ``decode_json_to_array`` of the notebooks."""
    meta = json.loads(item["image_features"])
    raw = base64.b64decode(meta["data"])
    return np.frombuffer(raw, dtype=np.dtype(meta["dtype"])).reshape(tuple(meta["shape"]))


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    clients: list[TestClient[Any, Any]] = []

    async def make(**overrides: Any) -> TestClient[Any, Any]:
        config = EmulatorConfig(**{"keys": [KEY], **overrides})
        client: TestClient[Any, Any] = TestClient(TestServer(create_emulator_app(config)))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def client(make_client: MakeClient) -> TestClient[Any, Any]:
    return await make_client()


async def stats_of(client: TestClient[Any, Any]) -> dict[str, Any]:
    response = await client.get("/_emulator/stats", headers=AUTH)
    assert response.status == 200
    result: dict[str, Any] = await response.json()
    return result


# --- routes, auth, routing ----------------------------------------------------------------------


async def test_liveness_says_it_is_an_emulator_not_the_model(client: TestClient[Any, Any]) -> None:
    response = await client.get("/")
    assert response.status == 200
    text = await response.text()
    assert "EMULATOR" in text and "not the MedImageParse model" in text and "classical" in text


async def test_unknown_path_is_404_and_wrong_method_is_405(client: TestClient[Any, Any]) -> None:
    assert (await client.get("/nope")).status == 404
    assert (await client.get("/score", headers=AUTH)).status == 405


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}, {"Authorization": "Bearer "}],
)
async def test_missing_or_invalid_bearer_is_401(client: TestClient[Any, Any], headers: dict[str, str]) -> None:
    response = await client.post("/score", json=one_row(), headers=headers)
    assert response.status == 401


async def test_any_configured_key_is_accepted(make_client: MakeClient) -> None:
    client = await make_client(keys=["primary", "secondary"])
    response = await client.post("/score", json=one_row(), headers={"Authorization": "Bearer secondary"})
    assert response.status == 200


async def test_unknown_deployment_header_is_404(client: TestClient[Any, Any]) -> None:
    headers = {**AUTH, "azureml-model-deployment": "nope"}
    assert (await client.post("/score", json=one_row(), headers=headers)).status == 404


async def test_no_deployment_with_positive_weight_is_404(make_client: MakeClient) -> None:
    client = await make_client(deployments={"blue": 0})
    assert (await client.post("/score", json=one_row(), headers=AUTH)).status == 404


async def test_traffic_goes_by_weight_and_the_header_pins_any_deployment(make_client: MakeClient) -> None:
    client = await make_client(deployments={"blue": 0, "green": 100})
    unpinned = await client.post("/score", json=one_row(), headers=AUTH)
    assert unpinned.status == 200 and unpinned.headers["azureml-model-deployment"] == "green"
    pinned = await client.post("/score", json=one_row(), headers={**AUTH, "azureml-model-deployment": "blue"})
    assert pinned.status == 200 and pinned.headers["azureml-model-deployment"] == "blue"


# --- envelope validation -> 424 with the model error headers ---------------------------------------

PNG_B64 = b64(encode_png(ct_like()))
BAD_ENVELOPES: list[tuple[str, Any, str]] = [
    ("not json", b"{nope", "not valid JSON"),
    ("array body", [], "input_data"),
    ("no input_data", {"data": []}, "input_data"),
    ("input_data not object", {"input_data": [1]}, "input_data"),
    ("no text column", {"input_data": {"columns": ["image"], "data": [[PNG_B64]]}}, "columns"),
    ("empty data", {"input_data": {"columns": ["image", "text"], "data": []}}, "non-empty"),
    ("row too short", {"input_data": {"columns": ["image", "text"], "data": [[PNG_B64]]}}, "row"),
    ("row not strings", {"input_data": {"columns": ["image", "text"], "data": [[PNG_B64, 3]]}}, "strings"),
    ("index length", {"input_data": {**envelope((PNG_B64, "a"))["input_data"], "index": [0, 1]}}, "index"),
    ("index not ints", {"input_data": {**envelope((PNG_B64, "a"))["input_data"], "index": ["0"]}}, "index"),
    ("too many rows", envelope(*[(PNG_B64, "liver")] * 3), "too many rows"),
    ("not base64", envelope(("@@not base64@@", "liver")), "base64"),
    ("jpeg", envelope((b64(cv2.imencode(".jpg", ct_like())[1].tobytes()), "liver")), "PNG"),
    ("16-bit png", envelope((b64(encode_png(ct_like().astype(np.uint16) * 200)), "liver")), "16-bit"),
    ("corrupt png", envelope((b64(encode_png(ct_like())[:60]), "liver")), "decoded"),
    ("empty prompt", envelope((PNG_B64, "liver & ")), "empty prompt"),
    ("blank text", envelope((PNG_B64, "   ")), "empty prompt"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "reason"), [case[1:] for case in BAD_ENVELOPES], ids=[c[0] for c in BAD_ENVELOPES])
async def test_bad_envelope_is_424_with_model_status_400(make_client: MakeClient, body: Any, reason: str) -> None:
    client = await make_client(max_rows=2)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await client.post("/score", data=data, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status == 424
    assert response.headers["ms-azureml-model-error-statuscode"] == "400"
    assert reason.lower() in response.headers["ms-azureml-model-error-reason"].lower()


async def test_strict_size_mode_rejects_non_1024_images(make_client: MakeClient) -> None:
    client = await make_client(size_mode="strict")
    response = await client.post("/score", json=one_row(), headers=AUTH)
    assert response.status == 424
    assert "1024x1024" in response.headers["ms-azureml-model-error-reason"]


async def test_jpeg_is_accepted_when_allowed(make_client: MakeClient) -> None:
    client = await make_client(allow_jpeg=True)
    jpeg = cv2.imencode(".jpg", ct_like())[1].tobytes()
    response = await client.post("/score", json=envelope((b64(jpeg), "liver")), headers=AUTH)
    assert response.status == 200


# --- successful scoring ------------------------------------------------------------------------------


async def test_both_base64_forms_give_the_same_answer(client: TestClient[Any, Any]) -> None:
    raw = encode_png(ct_like())
    plain = await client.post("/score", json=envelope((b64(raw), "liver")), headers=AUTH)
    mime = await client.post("/score", json=envelope((b64(raw, newlines=True), "liver")), headers=AUTH)
    assert plain.status == mime.status == 200
    assert await plain.read() == await mime.read()


async def test_response_decodes_with_the_official_sample_steps(client: TestClient[Any, Any]) -> None:
    big = ct_like(1024)
    body = envelope((b64(encode_png(big), newlines=True), "liver & tumor in liver "), (PNG_B64, "kidney"))
    body["params"] = "sitk"  # the toolkit really sends this; the endpoint ignores it
    response = await client.post("/score", json=body, headers=AUTH)
    assert response.status == 200 and response.content_type == "application/json"
    items = await response.json()
    assert len(items) == 2
    first, second = decode_like_official_samples(items[0]), decode_like_official_samples(items[1])
    assert first.shape == (2, 1024, 1024) and first.dtype == np.uint8
    assert second.shape == (1, 128, 128)  # lenient mode: masks at the input resolution
    assert items[0]["text_features"] == ["liver", "tumor"] and items[1]["text_features"] == ["kidney"]
    assert all(c in BIOMED_CLASSES for item in items for c in item["text_features"])
    organ = first[0] >= 128
    assert organ.sum() > 0.9 * (big > 0).sum()  # the mask follows the disc in the image


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P"])
async def test_gray_rgb_rgba_and_palette_pngs_are_accepted(client: TestClient[Any, Any], mode: str) -> None:
    buffer = io.BytesIO()
    Image.fromarray(ct_like()).convert(mode).save(buffer, format="PNG")
    response = await client.post("/score", json=envelope((b64(buffer.getvalue()), "liver")), headers=AUTH)
    assert response.status == 200
    masks = decode_like_official_samples((await response.json())[0])
    assert masks.shape == (1, 128, 128) and masks.max() == 255


async def test_every_response_has_a_request_id_and_echoes_the_client_id(client: TestClient[Any, Any]) -> None:
    client_id = str(uuid.uuid4())
    response = await client.post("/score", json=one_row(), headers={**AUTH, "x-ms-client-request-id": client_id})
    assert response.status == 200
    assert uuid.UUID(response.headers["x-request-id"])
    assert response.headers["x-ms-client-request-id"] == client_id
    assert "x-request-id" in (await client.get("/missing")).headers
    stats = await stats_of(client)
    assert stats["client_request_ids"] == [client_id] and stats["client_request_id_count"] == 1


# --- operational behaviour -----------------------------------------------------------------------------


async def test_latency_beyond_request_timeout_is_408(make_client: MakeClient) -> None:
    client = await make_client(latency_ms=5000, request_timeout_ms=100)
    started = time.monotonic()
    response = await client.post("/score", json=one_row(), headers=AUTH)
    assert response.status == 408
    assert time.monotonic() - started < 2.0


async def test_queue_wait_counts_towards_the_timeout(make_client: MakeClient) -> None:
    client = await make_client(latency_ms=300, request_timeout_ms=450, max_concurrent_requests_per_instance=1)
    first, second = await asyncio.gather(*(client.post("/score", json=one_row(), headers=AUTH) for _ in range(2)))
    assert sorted([first.status, second.status]) == [200, 408]


async def test_more_than_twice_capacity_in_flight_is_429(make_client: MakeClient) -> None:
    client = await make_client(latency_ms=300, max_concurrent_requests_per_instance=1, instance_count=1)
    responses = await asyncio.gather(*(client.post("/score", json=one_row(), headers=AUTH) for _ in range(5)))
    statuses = sorted(r.status for r in responses)
    assert statuses == [200, 200, 429, 429, 429]
    rejected = [r for r in responses if r.status == 429]
    assert all(["Too many pending requests" in await r.text() for r in rejected])
    assert (await stats_of(client))["max_in_flight"] == 2


async def test_throughput_is_capacity_over_latency(make_client: MakeClient) -> None:
    client = await make_client(latency_ms=200, max_concurrent_requests_per_instance=1, instance_count=2)
    started = time.monotonic()
    responses = await asyncio.gather(*(client.post("/score", json=one_row(), headers=AUTH) for _ in range(4)))
    elapsed = time.monotonic() - started
    assert [r.status for r in responses] == [200] * 4
    assert 0.38 < elapsed < 1.5  # two waves of two, not one wave of four


async def test_requests_beyond_the_rps_limit_are_429(make_client: MakeClient) -> None:
    client = await make_client(rate_limit_rps=2)
    statuses = [(await client.post("/score", json=one_row(), headers=AUTH)).status for _ in range(5)]
    assert statuses[:2] == [200, 200] and 429 in statuses[2:]


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429, 408])
async def test_injected_faults_return_their_status(make_client: MakeClient, status: int) -> None:
    client = await make_client(fault_rates={status: 1.0})
    response = await client.post("/score", json=one_row(), headers=AUTH)
    assert response.status == status
    assert response.headers["x-emulator-injected-fault"] == "1"


async def test_injected_424_carries_model_status_500(make_client: MakeClient) -> None:
    client = await make_client(fault_rates={424: 1.0})
    response = await client.post("/score", json=one_row(), headers=AUTH)
    assert response.status == 424
    assert response.headers["ms-azureml-model-error-statuscode"] == "500"


# --- admin API -------------------------------------------------------------------------------------------


async def test_admin_routes_need_a_key(client: TestClient[Any, Any]) -> None:
    assert (await client.get("/_emulator/stats")).status == 401
    assert (await client.post("/_emulator/config", json={"latency_ms": 1})).status == 401


async def test_stats_count_statuses_rows_and_prompts(client: TestClient[Any, Any]) -> None:
    await client.post("/score", json=envelope((PNG_B64, "liver & tumor"), (PNG_B64, "lung")), headers=AUTH)
    await client.post("/score", json=one_row())
    stats = await stats_of(client)
    assert stats["status_counts"] == {"200": 1, "401": 1}
    assert stats["rows_scored"] == 2 and stats["prompts_scored"] == 3
    assert stats["in_flight"] == 0 and stats["max_in_flight"] == 1


async def test_config_patch_changes_knobs_and_resets_stats(client: TestClient[Any, Any]) -> None:
    await client.post("/score", json=one_row(), headers=AUTH)
    patch = {"fault_rates": {"503": 1.0}, "latency_ms": 5, "reset_stats": True}
    response = await client.post("/_emulator/config", json=patch, headers=AUTH)
    assert response.status == 200
    assert (await response.json())["config"]["fault_rates"] == {"503": 1.0}
    assert (await stats_of(client))["requests_total"] == 0
    assert (await client.post("/score", json=one_row(), headers=AUTH)).status == 503


@pytest.mark.parametrize(
    "patch",
    [{"latency_ms": "slow"}, {"keys": ["x"]}, {"fault_rates": {"418": 0.5}}, {"size_mode": "huge"}, []],
)
async def test_invalid_config_patch_is_400_and_changes_nothing(client: TestClient[Any, Any], patch: Any) -> None:
    before = await (await client.get("/_emulator/config", headers=AUTH)).json()
    response = await client.post("/_emulator/config", json=patch, headers=AUTH)
    assert response.status == 400
    assert await (await client.get("/_emulator/config", headers=AUTH)).json() == before


# --- managed identity (App Service protocol) with the real azure-identity credential ------------------


OTHER_IDENTITY_VARIABLES = (
    "AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_USERNAME", "IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT",
)  # fmt: skip


@pytest.fixture
def identity_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    # Anything that would steer azure-identity to another credential or managed-identity flavour.
    for name in OTHER_IDENTITY_VARIABLES:
        monkeypatch.delenv(name, raising=False)

    def point_at(base_url: str, header: str = IDENTITY_SECRET) -> None:
        monkeypatch.setenv("IDENTITY_ENDPOINT", f"{base_url}/msi/token")
        monkeypatch.setenv("IDENTITY_HEADER", header)

    return point_at


def aad_config(token_ttl_s: float = 3600.0) -> EmulatorConfig:
    return EmulatorConfig(keys=[KEY], auth_mode="aad_token", identity_header=IDENTITY_SECRET, token_ttl_s=token_ttl_s)


def score_with(base_url: str, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.post(f"{base_url}/score", json=one_row("liver"), headers=headers, timeout=10).status_code


def test_default_azure_credential_token_scores(identity_env: Callable[[str], None]) -> None:
    with running_emulator(aad_config()) as base_url:
        identity_env(base_url)
        with DefaultAzureCredential() as credential:
            token = credential.get_token("https://ml.azure.com/.default")
        assert token.expires_on > time.time() + 3000
        assert score_with(base_url, token.token) == 200
        assert score_with(base_url, KEY) == 401  # keys do not score in aad_token mode


def test_expired_token_is_401(identity_env: Callable[[str], None]) -> None:
    with running_emulator(aad_config(token_ttl_s=1.5)) as base_url:
        identity_env(base_url)
        with ManagedIdentityCredential() as credential:
            token = credential.get_token("https://ml.azure.com/.default")
        assert score_with(base_url, token.token) == 200
        time.sleep(1.6)
        assert score_with(base_url, token.token) == 401


def test_token_for_another_audience_is_401(identity_env: Callable[[str], None]) -> None:
    with running_emulator(aad_config()) as base_url:
        identity_env(base_url)
        with ManagedIdentityCredential() as credential:
            token = credential.get_token("https://management.azure.com/.default")
        assert score_with(base_url, token.token) == 401


def test_wrong_identity_header_gets_no_token(identity_env: Callable[..., None]) -> None:
    with running_emulator(aad_config()) as base_url:
        identity_env(base_url, "not-the-secret")
        with ManagedIdentityCredential() as credential, pytest.raises(ClientAuthenticationError):
            credential.get_token("https://ml.azure.com/.default")


async def test_token_route_is_absent_without_identity_header(client: TestClient[Any, Any]) -> None:
    response = await client.get("/msi/token", params={"api-version": "2019-08-01", "resource": "x"})
    assert response.status == 404
