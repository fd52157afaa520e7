"""A hung endpoint cannot hold a worker thread: the emulator accepts the request and then trickles
its answer one byte at a time (no read ever times out) or says nothing at all."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from emulator.config import EmulatorConfig
from medparse.endpoint import EndpointClient, ScoreRow
from medparse.endpoint.errors import EndpointTimeout, JobTimeLimitExceeded
from medparse.endpoint.limiter import LocalInFlightLimiter
from medparse.http_deadline import deadline_in
from medparse.settings import Settings
from tests.integration.test_endpoint_client import png
from tests.support.emulator_server import running_emulator

KEY = "deadline-key-" + uuid.uuid4().hex[:8]
ROW = ScoreRow(png(seed=3), ["liver"])


@pytest.fixture
def emulator() -> Iterator[str]:
    config = EmulatorConfig(keys=[KEY], hang_rate=1.0, hang_mode="trickle", hang_trickle_interval_s=0.2)
    with running_emulator(config) as base_url:
        yield base_url


def client_for(base_url: str, **overrides: Any) -> EndpointClient:
    values: dict[str, Any] = {
        "endpoint_scoring_uri": f"{base_url}/score", "endpoint_key": KEY, "endpoint_backoff_min_s": 0.01,
        "endpoint_backoff_max_s": 0.05, "endpoint_max_attempts": 2, "endpoint_max_total_s": 60.0,
        "endpoint_connect_timeout_s": 2.0, "endpoint_read_timeout_s": 10.0, "endpoint_request_deadline_s": 1.0,
        **overrides,
    }
    settings = Settings(**values)
    return EndpointClient(settings, limiter=LocalInFlightLimiter(4))


def test_a_trickling_endpoint_is_cut_at_the_request_deadline_and_retried(emulator: str) -> None:
    with client_for(emulator) as client:
        began = time.monotonic()
        with pytest.raises(EndpointTimeout) as caught:
            client.score([ROW], job_id="j1")
        elapsed = time.monotonic() - began
    # two attempts of 1 s each (the 10 s read timeout never fired: a byte came every 0.2 s)
    assert 1.9 <= elapsed < 3.5, elapsed
    assert caught.value.code == "endpoint_timeout" and caught.value.attempts == 2
    assert "request deadline of 1 s" in caught.value.message


def test_the_jobs_time_limit_ends_the_call_whatever_the_per_request_budget(emulator: str) -> None:
    with client_for(emulator, endpoint_request_deadline_s=30.0, endpoint_max_attempts=6) as client:
        began = time.monotonic()
        with pytest.raises(JobTimeLimitExceeded) as caught, deadline_in(1.5):
            client.score([ROW], job_id="j2")
        elapsed = time.monotonic() - began
    assert 1.4 <= elapsed < 2.5, elapsed
    assert caught.value.code == "timeout" and "time limit" in caught.value.message


def test_a_silent_endpoint_is_cut_at_the_request_deadline(emulator: str) -> None:
    httpx.post(f"{emulator}/_emulator/config", json={"hang_mode": "silent"},
               headers={"Authorization": f"Bearer {KEY}"}).raise_for_status()
    with client_for(emulator, endpoint_max_attempts=1) as client:
        began = time.monotonic()
        with pytest.raises(EndpointTimeout):
            client.score([ROW], job_id="j3")
        assert time.monotonic() - began < 2.0


def test_hang_knobs_are_validated_and_switch_off(emulator: str) -> None:
    admin = {"Authorization": f"Bearer {KEY}"}
    bad = httpx.post(f"{emulator}/_emulator/config", json={"hang_mode": "forever"}, headers=admin)
    assert bad.status_code == 400 and "hang_mode" in bad.json()["message"]
    assert httpx.post(f"{emulator}/_emulator/config", json={"hang_rate": 1.5}, headers=admin).status_code == 400
    httpx.post(f"{emulator}/_emulator/config", json={"hang_rate": 0}, headers=admin).raise_for_status()
    with client_for(emulator) as client:
        result = client.score([ROW], job_id="j4")
    assert result.attempts == 1 and len(result.rows) == 1
