"""docker-compose.yml (Docker cannot run here, so the file is read): every service has a restart
policy and a healthcheck, and the healthchecks call commands that exist with the right ports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from medparse.settings import Settings
from workers.celery_app import ROLE_QUEUES

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
ONE_SHOT = {"migrate"}


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    loaded: dict[str, dict[str, Any]] = yaml.safe_load(COMPOSE.read_text())["services"]
    return loaded


def test_long_running_services_restart_and_have_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    assert {"postgres", "redis", "migrate", "gateway", "worker", "emulator"} <= set(services)
    for name, service in services.items():
        if name in ONE_SHOT:
            continue
        assert service.get("restart") in {"unless-stopped", "always", "on-failure"}, name
        check = service.get("healthcheck")
        assert check and not check.get("disable") and check.get("test"), name


def test_the_migration_is_a_one_shot_that_is_not_restarted(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["healthcheck"] == {"disable": True}
    for name, service in services.items():  # whoever waits for it waits for its success
        condition = (service.get("depends_on") or {}).get("migrate", {}).get("condition")
        assert condition in (None, "service_completed_successfully"), name


def _medparse_healthcheck(service: dict[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    assert test[:4] == ["CMD", "python", "-m", "medparse.healthcheck"], test
    return list(test[4:])


def test_app_healthchecks_probe_the_port_or_the_role_the_service_runs(services: dict[str, dict[str, Any]]) -> None:
    gateway = services["gateway"]
    assert _medparse_healthcheck(gateway) == ["http", f"http://127.0.0.1:{gateway['environment']['MEDPARSE_PORT']}/healthz"]
    emulator = services["emulator"]
    port = emulator["command"][emulator["command"].index("--port") + 1]
    assert _medparse_healthcheck(emulator) == ["http", f"http://127.0.0.1:{port}/"]
    workers = [s for s in services.values() if s.get("command", [])[:2] == ["medparse", "worker"]]
    assert len(workers) >= 1
    for worker in workers:
        command = worker["command"]
        role = command[command.index("--role") + 1] if "--role" in command else "segmentation"
        assert role in ROLE_QUEUES
        assert _medparse_healthcheck(worker) == ["worker", role]


def test_the_gateway_gets_time_to_finish_its_requests_before_it_is_killed(
    services: dict[str, dict[str, Any]],
) -> None:
    grace = services["gateway"]["stop_grace_period"]
    assert grace.endswith("s")
    assert float(grace[:-1]) >= Settings().gateway_shutdown_timeout_s + 5
