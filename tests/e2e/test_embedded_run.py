"""``medparse run`` (what ``make run`` starts): one command, no servers, a working service."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.ports import free_port
from tests.support.processes import stop

pytestmark = pytest.mark.e2e


def test_medparse_run_prints_key_and_serves_the_sample(tmp_path: Path) -> None:
    port, emulator_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDPARSE_")}
    env.update(
        MEDPARSE_DATA_DIR=str(tmp_path / "var"), MEDPARSE_PORT=str(port), MEDPARSE_EMULATOR_PORT=str(emulator_port)
    )
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "run"], env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 60
        key = None
        while key is None and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            match = re.search(r"^API key: (mpk_\S+)$", log.read_text(), re.MULTILINE)
            key = match.group(1) if match else None
            time.sleep(0.2)
        assert key, log.read_text()
        text = log.read_text()
        assert f"http://127.0.0.1:{port}" in text and "curl" in text
        sample = tmp_path / "var" / "sample.png"
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            resp = http.post(
                "/v1/jobs",
                headers={"Authorization": f"Bearer {key}", "Prefer": "wait=40"},
                files={"image": ("sample.png", sample.read_bytes(), "image/png")},
                data={"prompts": "liver & kidney"},
            )
            assert resp.status_code == 202, resp.text
            job = resp.json()
            assert job["status"] == "succeeded", job
            assert len(job["result"]["masks"]) == 2
            assert http.get("/readyz").status_code == 200
    finally:
        stop(proc, timeout=30)
    assert proc.returncode == 0, log.read_text()[-3000:]
