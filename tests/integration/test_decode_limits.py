"""The decode budget through the real gateway (medparse/decode_pool.py): an upload or a result whose
decode goes over its memory or time limit is a 422 ``image_too_complex`` naming the limit, a flood of
decodes beyond the cap is a 503 ``decode_busy`` with Retry-After, and the gateway answers on."""

from __future__ import annotations

import asyncio
import functools
import gzip
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import nibabel as nib
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from emulator.config import EmulatorConfig
from gateway.app import create_app
from medparse.settings import Settings
from tests.support import medical_files as mf
from tests.support.emulator_server import running_emulator
from tests.support.factories import new_tenant, organ_image
from workers.celery_app import make_celery
from workers.context import ContextHolder, WorkerContext
from workers.tasks import run_job

KEY = "emulator-test-key"
MiB = 1024 * 1024
TIGHT = {"decode_memory_limit_bytes": 64 * MiB, "decode_processes": 1}


@functools.cache
def zero_volume_gz(side: int = 200) -> bytes:
    """A float64 zero cube as .nii.gz: 64 MB decoded for side 200, ~62 kB uploaded."""
    image = nib.Nifti1Image(np.zeros((side, side, side), np.float64), np.eye(4))
    return gzip.compress(image.to_bytes(), compresslevel=1)


@pytest.fixture
def settings(pg_settings: Settings) -> Iterator[Settings]:
    with running_emulator(EmulatorConfig(keys=[KEY])) as base_url:
        yield pg_settings.model_copy(update={
            "endpoint_scoring_uri": f"{base_url}/score", "endpoint_key": SecretStr(KEY),
            "endpoint_max_attempts": 2, "endpoint_backoff_min_s": 0.01, "endpoint_backoff_max_s": 0.02,
        })


@pytest.fixture
def key(settings: Settings) -> str:
    return new_tenant(settings)[1]


async def client(settings: Settings, **changes: Any) -> TestClient[Any, Any]:
    api: TestClient[Any, Any] = TestClient(TestServer(create_app(settings.model_copy(update=changes))))
    await api.start_server()
    return api


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    api = await client(settings)
    yield api
    await api.close()


@pytest.fixture
async def tight(settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    api = await client(settings, **TIGHT)
    yield api
    await api.close()


async def submit(api: TestClient[Any, Any], key: str, image: bytes, options: dict[str, Any] | None = None,
                 ) -> tuple[aiohttp.ClientResponse, dict[str, Any]]:
    form = aiohttp.FormData()
    form.add_field("image", image, filename="upload.bin", content_type="application/octet-stream")
    form.add_field("prompts", "liver")
    if options is not None:
        form.add_field("options", json.dumps(options))
    resp = await api.post("/v1/jobs", data=form, headers={"Authorization": f"Bearer {key}"})
    return resp, await resp.json()


async def test_an_upload_over_the_memory_budget_is_422_and_the_gateway_goes_on(
    tight: TestClient[Any, Any], key: str
) -> None:
    resp, problem = await submit(tight, key, zero_volume_gz())
    assert resp.status == 422, problem
    assert problem["code"] == "image_too_complex"
    assert problem["fields"][0]["field"] == "image" and "decode_memory_limit_bytes" in problem["detail"]
    assert (await tight.get("/healthz")).status == 200
    # The pool replaced its process: the next medical upload and a plain PNG are accepted.
    resp, job = await submit(tight, key, mf.synthetic_ct_volume((48, 40, 6)))
    assert resp.status == 202, job
    resp, job = await submit(tight, key, organ_image()[0])
    assert resp.status == 202, job


async def test_an_upload_past_the_decode_deadline_is_422(settings: Settings, key: str) -> None:
    api = await client(settings, decode_timeout_s=0.001)
    try:
        resp, problem = await submit(api, key, mf.synthetic_ct_volume((48, 40, 6)))
        assert resp.status == 422, problem
        assert problem["code"] == "image_too_complex" and "decode_timeout_s" in problem["detail"]
    finally:
        await api.close()


async def test_decodes_beyond_the_cap_get_503_with_retry_after(settings: Settings, key: str) -> None:
    api = await client(settings, decode_processes=1, decode_max_waiting=1)
    try:
        upload = zero_volume_gz()  # ~0.3 s to decode: the first holds the one process while the others arrive
        answers = await asyncio.gather(*(submit(api, key, upload) for _ in range(6)))
        statuses = sorted(resp.status for resp, _ in answers)
        assert set(statuses) <= {202, 503} and statuses.count(202) >= 1 and statuses.count(503) >= 3, statuses
        for resp, body in answers:
            if resp.status == 503:
                assert body["code"] == "decode_busy" and int(resp.headers["Retry-After"]) >= 1
    finally:
        await api.close()


async def test_a_result_over_the_memory_budget_is_422_and_others_still_render(
    api: TestClient[Any, Any], tight: TestClient[Any, Any], key: str, settings: Settings
) -> None:
    resp, job = await submit(api, key, zero_volume_gz(), {"slices": [0, 1]})
    assert resp.status == 202, job
    ctx: WorkerContext = ContextHolder(settings, make_celery(settings, sweeper=False)).get()
    try:
        assert run_job(ctx, job["id"]) == "succeeded"
    finally:
        ctx.client.close()
        ctx.engine.dispose()
        assert ctx.decoder is not None
        ctx.decoder.close()
    headers = {"Authorization": f"Bearer {key}"}
    url = f"/v1/jobs/{job['id']}/result"
    # The overlay decodes the 64 MB float volume again: over a 64 MiB budget.
    overlay = await tight.get(f"{url}?format=overlay", headers=headers)
    problem = await overlay.json()
    assert overlay.status == 422 and problem["code"] == "image_too_complex", problem
    # The masks alone (8 MB) fit, on the same (replaced) decode process; the normal gateway renders both.
    assert (await tight.get(f"{url}?format=npz", headers=headers)).status == 200
    assert (await api.get(f"{url}?format=overlay", headers=headers)).status == 200
    assert (await tight.get("/healthz")).status == 200


async def test_a_worker_decode_over_its_budget_fails_the_job_with_image_too_complex(
    api: TestClient[Any, Any], key: str, settings: Settings
) -> None:
    resp, job = await submit(api, key, zero_volume_gz(), {"slices": [0, 1]})
    assert resp.status == 202, job
    # A worker with a smaller budget than the gateway's (a setting changed between submit and run).
    tight_settings = settings.model_copy(update=TIGHT)
    ctx: WorkerContext = ContextHolder(tight_settings, make_celery(tight_settings, sweeper=False)).get()
    try:
        assert run_job(ctx, job["id"]) == "failed"
        assert ctx.decoder is not None and ctx.decoder.call(str.upper, "next") == "NEXT"  # the pool goes on
    finally:
        ctx.client.close()
        ctx.engine.dispose()
        assert ctx.decoder is not None
        ctx.decoder.close()
    done = await (await api.get(f"/v1/jobs/{job['id']}", headers={"Authorization": f"Bearer {key}"})).json()
    assert done["status"] == "failed" and done["attempts"] == 1, done
    assert done["error"]["code"] == "image_too_complex" and "decode_memory_limit_bytes" in done["error"]["message"]
