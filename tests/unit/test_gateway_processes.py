"""How many gateway processes ``medparse serve`` starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medparse.settings import Settings
from runtime.cli import gateway_process_count

PG = "postgresql+asyncpg://u@127.0.0.1/db"
REDIS = "redis://127.0.0.1:6379/0"


def test_one_per_core_by_default_with_postgres_and_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(data_dir=tmp_path, database_url=PG, redis_url=REDIS)
    assert gateway_process_count(settings, None) == len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)  # a container limited to 1 CPU
    assert gateway_process_count(settings, None) == 1


def test_the_setting_and_the_flag_win(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url=PG, redis_url=REDIS, gateway_processes=3)
    assert gateway_process_count(settings, None) == 3
    assert gateway_process_count(settings, 5) == 5


def test_the_embedded_mode_runs_one(tmp_path: Path) -> None:
    assert gateway_process_count(Settings(data_dir=tmp_path), None) == 1
    with pytest.raises(SystemExit):
        gateway_process_count(Settings(data_dir=tmp_path), 2)
