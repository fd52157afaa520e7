"""The dependency floors keep out releases with published vulnerabilities, and the lock file that the
Dockerfile installs (``requirements.lock``, pip-compile with hashes) stays true to pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]

#: Releases that a floor must exclude, with the advisory that is the reason.
VULNERABLE = [
    ("aiohttp", "3.13.2", "CVE-2025-69223: request auto_decompress zip bomb"),
    ("aiohttp", "3.14.0", "CVE-2026-54278: compressed body decompressed in one chunk at cleanup"),
    ("Pillow", "12.1.0", "CVE-2026-25990: out-of-bounds write loading PSD images"),
]


def _runtime_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}


def _locked() -> dict[str, tuple[Version, int]]:
    """name -> (pinned version, number of hashes) from requirements.lock."""
    text = (ROOT / "requirements.lock").read_text()
    pins: dict[str, tuple[Version, int]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        match = re.match(r"([A-Za-z0-9_.\-]+)==([^\s;\\]+)", block)
        if match:
            pins[canonicalize_name(match[1])] = (Version(match[2]), block.count("--hash=sha256:"))
    return pins


@pytest.mark.parametrize(("name", "version", "why"), VULNERABLE)
def test_floors_exclude_releases_with_known_vulnerabilities(name: str, version: str, why: str) -> None:
    requirement = _runtime_requirements()[canonicalize_name(name)]
    assert not requirement.specifier.contains(version), f"{name} {requirement.specifier} admits {version} ({why})"


def test_every_runtime_dependency_is_locked_within_its_range_with_hashes() -> None:
    locked = _locked()
    for name, requirement in _runtime_requirements().items():
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        assert name in locked, f"{name} is missing from requirements.lock"
        version, hashes = locked[name]
        assert requirement.specifier.contains(version), f"the lock pins {name}=={version} outside {requirement}"
        assert hashes > 0, f"{name} is locked without a hash"


def test_no_locked_package_is_a_known_vulnerable_release() -> None:
    locked = _locked()
    for name, version, why in VULNERABLE:
        pinned = locked.get(canonicalize_name(name))
        assert pinned is None or pinned[0] != Version(version), f"requirements.lock pins {name}=={version} ({why})"
