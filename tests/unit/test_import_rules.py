"""The package boundaries hold: the import-linter contracts in pyproject.toml ([tool.importlinter]) are kept.

runtime > (gateway | workers) > db > medparse, the emulator on its own, settings a leaf, and services
without aiohttp. ``make lint`` runs the same command.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_import_contracts_are_kept() -> None:
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint_imports is not None, "import-linter (test extra) is not installed"
    # --no-cache: a cache left in the repo would be one more file to ignore, and the graph is quick to build.
    run = subprocess.run([lint_imports, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
