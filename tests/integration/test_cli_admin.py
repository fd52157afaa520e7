"""``medparse tenant|key|audit``: the CLI runs the admin use cases the API runs (gateway/admin/services.py)
and keeps its own output, exit codes and ``cli`` audit entries, on both backends."""

from __future__ import annotations

import pytest

from medparse.settings import Settings
from runtime.cli import build_parser
from tests.support.factories import random_name


def medparse(settings: Settings, *argv: str) -> None:
    args = build_parser().parse_args(list(argv))
    args.func(settings, args)


def test_tenant_and_key_administration_prints_and_exits_as_before(
    backend_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    name = random_name("lab")
    medparse(backend_settings, "tenant", "create", name, "--admin")
    created = capsys.readouterr().out.splitlines()
    assert created[0].startswith(f"tenant {name} (") and created[1].startswith("API key: mpk_")
    with pytest.raises(SystemExit) as again:
        medparse(backend_settings, "tenant", "create", name)
    assert again.value.code == f"tenant {name!r} already exists"
    with pytest.raises(SystemExit) as nobody:
        medparse(backend_settings, "key", "create", random_name("nobody"))
    assert str(nobody.value.code).startswith("no tenant named 'nobody-")

    medparse(backend_settings, "key", "create", name, "--scope", "jobs:write", "--scope", "jobs:read", "--label", "lab")
    minted = capsys.readouterr().out.splitlines()
    key_id = minted[0].split()[2]
    assert minted[0] == f"key id {key_id} for tenant {name}" and minted[1].startswith(f"API key: mpk_{key_id}_")
    medparse(backend_settings, "key", "list", name)
    listed = capsys.readouterr().out.splitlines()
    # the first key's scopes as ``tenant create --admin`` gives them; the minted one's sorted, once each
    assert "scopes=jobs:read,jobs:write,admin  active  label=-  expires=never" in listed[0]
    assert listed[1].startswith(f"{key_id}  tenant=") and "scopes=jobs:read,jobs:write  active  label=lab" in listed[1]

    medparse(backend_settings, "key", "revoke", key_id)
    assert capsys.readouterr().out == f"revoked {key_id}\n"
    with pytest.raises(SystemExit) as revoked:
        medparse(backend_settings, "key", "revoke", key_id)
    assert revoked.value.code == f"no active key {key_id!r}"

    medparse(backend_settings, "audit", "--tenant", name, "--json")
    actions = [line for line in capsys.readouterr().out.splitlines() if '"actor": "cli"' in line]
    assert [a.split('"action": "')[1].split('"')[0] for a in actions] == ["key.mint", "key.mint", "tenant.create"]
    medparse(backend_settings, "audit", "--action", "key.revoke")
    assert f"target=key:{key_id}" in capsys.readouterr().out
