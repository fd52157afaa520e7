"""Schemathesis over our own OpenAPI document, against a real gateway: no input may cause a 5xx."""

from __future__ import annotations

import hashlib
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medparse.settings import Settings
from runtime.cli import create_tenant
from tests.support.factories import random_name
from tests.support.ports import free_port
from tests.support.processes import settings_env, start, stop, wait_http

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_generated_requests_never_get_a_server_error(pg_settings: Settings, tmp_path: Path) -> None:
    _, key = create_tenant(pg_settings, random_name("fuzz"), scopes=["jobs:read", "jobs:write", "admin"])
    port = free_port()
    operator_token = secrets.token_hex(32)
    env = settings_env(
        pg_settings, MEDPARSE_PORT=str(port), MEDPARSE_TENANT_RATE_LIMIT_RPS="100000",
        MEDPARSE_TENANT_RATE_LIMIT_BURST="100000", MEDPARSE_LOG_LEVEL="WARNING",
        MEDPARSE_OPERATOR_TOKEN_SHA256=hashlib.sha256(operator_token.encode()).hexdigest(),
    )
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st is not None, "schemathesis (test extra) is not installed"
    gateway = start(["serve"], env, tmp_path / "gateway.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=gateway)
        run = subprocess.run(
            [st, "run", f"http://127.0.0.1:{port}/openapi.json", "-H", f"Authorization: Bearer {key}",
             "--checks", "not_a_server_error", "--max-examples", "15", "--seed", "7"],
            capture_output=True, text=True, timeout=240, cwd=tmp_path,  # its cache stays out of the repo
        )
        # The operator's routes refuse every tenant key: fuzz them again with the operator credential.
        as_operator = subprocess.run(
            [st, "run", f"http://127.0.0.1:{port}/openapi.json", "-H", f"Authorization: Bearer {operator_token}",
             "--include-path-regex", "^/v1/(admin|operator|usage)", "--checks", "not_a_server_error",
             "--max-examples", "15", "--seed", "7"],
            capture_output=True, text=True, timeout=240, cwd=tmp_path,
        )
    finally:
        stop(gateway)
    log = (tmp_path / "gateway.log").read_text()
    assert run.returncode == 0, run.stdout[-4000:]
    assert as_operator.returncode == 0, as_operator.stdout[-4000:]
    assert " passed" in as_operator.stdout
    assert "unhandled error" not in log, log[-4000:]
    assert " passed" in run.stdout  # it really generated and sent requests
