"""Submit -> poll -> masks through real processes: gateway, Celery worker, emulator, over HTTP.

Run for the production shape (Postgres + Redis) and the embedded default (SQLite + local queue).
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from medparse.settings import Settings
from tests.support.factories import iou, new_tenant, organ_image
from tests.support.ports import free_port
from tests.support.processes import emulator_process, service_processes, settings_env, start, stop, wait_http

pytestmark = pytest.mark.e2e


def _submit_and_check(base: str, key: str) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    image, organ = organ_image(333, 211)
    with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
        resp = http.post(
            "/v1/jobs",
            files={"image": ("scan.png", image, "image/png")},
            data={"prompts": "liver & tumor"},
            headers={"Prefer": "wait=30"},
        )
        assert resp.status_code == 202, resp.text
        job = resp.json()
        deadline = time.monotonic() + 60
        while job["status"] in ("queued", "running") and time.monotonic() < deadline:
            job = http.get(resp.headers["Location"], headers={"Prefer": "wait=10"}).json()
        assert job["status"] == "succeeded", job
        # The waiting answer came from the worker's notification (db/job_snapshot.py): a fresh
        # read of the job must say exactly the same.
        assert http.get(resp.headers["Location"]).json() == job
        assert job["attempts"] == 1 and job["started_at"] and job["completed_at"]
        result = job["result"]
        assert (result["width"], result["height"]) == (333, 211)
        assert [m["prompt"] for m in result["masks"]] == ["liver", "tumor"]
        assert result["masks"][0]["label"] == "liver"
        assert result["provenance"]["endpoint_client_request_id"]

        png = http.get(result["masks"][0]["url"])
        assert png.status_code == 200 and png.headers["Content-Type"] == "image/png"
        mask = cv2.imdecode(np.frombuffer(png.content, np.uint8), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (211, 333) and set(np.unique(mask)) <= {0, 255}
        # The emulator segments the bright organ for an organ prompt; it must come back in place.
        assert iou(mask > 0, organ) > 0.8
        assert result["masks"][0]["area_px"] == int((mask > 0).sum())
        x0, y0, x1, y1 = result["masks"][0]["bbox"]
        ys, xs = np.nonzero(mask)
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)

        npz = np.load(io.BytesIO(http.get(result["npz_url"]).content))
        assert npz["masks"].shape == (2, 211, 333) and npz["masks"].dtype == np.uint8
        assert np.array_equal(npz["masks"][0], (mask > 0).astype(np.uint8))


def test_postgres_redis_worker_and_emulator_end_to_end(pg_settings: Settings, tmp_path: Path) -> None:
    _, key = new_tenant(pg_settings)
    emulator_key = secrets.token_urlsafe(16)
    with emulator_process(tmp_path, emulator_key) as emulator, service_processes(
        pg_settings, emulator, emulator_key, tmp_path
    ) as base:
        _submit_and_check(base, key)
    # No secret or image byte reached any process's log (all three logged at INFO meanwhile).
    logs = b"".join(p.read_bytes() for p in tmp_path.glob("*.log"))
    assert b"endpoint call ok" in logs  # the logs are really there
    secret_part = key.rsplit("_", 1)[1].encode()
    for canary in (secret_part, emulator_key.encode(), b"Bearer ", b"whsec_", b"\x89PNG", b"iVBORw0KGgo"):
        assert canary not in logs, canary


def test_embedded_default_end_to_end(embedded_settings: Settings, tmp_path: Path) -> None:
    _, key = new_tenant(embedded_settings)
    emulator_key = secrets.token_urlsafe(16)
    with emulator_process(tmp_path, emulator_key) as emulator, service_processes(
        embedded_settings, emulator, emulator_key, tmp_path
    ) as base:
        _submit_and_check(base, key)


@contextmanager
def _two_gateway_processes(
    settings: Settings, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int, list[int]]]:
    """``medparse serve --processes 2``: (parent, port, the children's pids), all stopped afterwards."""
    port = free_port()
    proc = start(["serve", "--processes", "2"], settings_env(settings, MEDPARSE_PORT=str(port)),
                 tmp_path / "gateway.log")
    children: list[int] = []
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc=proc)
        children = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        yield proc, port, children
    finally:
        stop(proc)
        for pid in children:  # the parent may be gone already: no child may outlive the test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_several_gateway_processes_share_the_port(pg_settings: Settings, tmp_path: Path) -> None:
    _, key = new_tenant(pg_settings)
    with _two_gateway_processes(pg_settings, tmp_path) as (proc, port, children):
        assert len(children) == 2
        image, _ = organ_image()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}) as http:
            files = {"image": ("x.png", image, "image/png")}
            ids = {http.post("/v1/jobs", files=files, data={"prompts": "liver"}).json()["id"] for _ in range(6)}
            assert len(ids) == 6 and all(http.get(f"/v1/jobs/{i}").status_code == 200 for i in ids)
    assert proc.returncode == 0
    assert "Traceback" not in (tmp_path / "gateway.log").read_text()


def test_gateway_children_exit_when_the_parent_is_killed(pg_settings: Settings, tmp_path: Path) -> None:
    """kill -9 of ``medparse serve --processes 2`` must not leave children answering on the port."""
    with _two_gateway_processes(pg_settings, tmp_path) as (proc, port, _):
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            except httpx.TransportError:
                break  # nothing listens any more
            time.sleep(0.2)
        else:
            raise AssertionError("a gateway child still answers after its parent was killed")
