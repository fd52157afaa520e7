"""docker-compose.yml's database logins (Docker cannot run here, so the file is read): only the
one-shot migration connects as the owner; the gateway as medparse_gateway (a member of
medparse_app), every other service of ours as medparse_worker (medparse_system); the roles'
script is mounted where the postgres image runs it, and creates exactly those memberships."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ROLES_SCRIPT = ROOT / "deploy" / "postgres" / "10-medparse-roles.sh"


def _login(url: str) -> str:
    return str(make_url(re.sub(r"\$\{[^}]*\}", "secret", url)).username)


def test_each_service_logs_in_as_its_role_and_only_the_migration_as_the_owner() -> None:
    compose: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    services: dict[str, dict[str, Any]] = compose["services"]
    owner = services["postgres"]["environment"]["POSTGRES_USER"]
    logins = {
        name: _login(service["environment"]["MEDPARSE_DATABASE_URL"])
        for name, service in services.items()
        if isinstance(service.get("environment"), dict) and "MEDPARSE_DATABASE_URL" in service["environment"]
    }
    assert logins.pop("migrate") == owner
    assert logins.pop("gateway") == "medparse_gateway"
    assert logins and set(logins.values()) == {"medparse_worker"}, logins  # the workers, of every role
    for service in services.values():
        assert "MEDPARSE_SYSTEM_DATABASE_URL" not in (service.get("environment") or {})


def test_the_roles_script_is_mounted_and_grants_the_memberships() -> None:
    postgres = yaml.safe_load(COMPOSE.read_text())["services"]["postgres"]
    assert any(str(v).endswith(":/docker-entrypoint-initdb.d/10-medparse-roles.sh:ro") for v in postgres["volumes"])
    script = ROLES_SCRIPT.read_text()
    assert re.search(r"CREATE ROLE medparse_gateway LOGIN NOSUPERUSER NOBYPASSRLS .*IN ROLE medparse_app ", script)
    assert re.search(r"CREATE ROLE medparse_worker LOGIN NOSUPERUSER NOBYPASSRLS .*IN ROLE medparse_system ", script)
    assert "medparse_system" not in script.split("medparse_gateway", 1)[1].split("\n", 1)[0]
