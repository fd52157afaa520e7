"""Stairway test: every revision upgrades, downgrades and upgrades again; head matches the models."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from db.engine import make_sync_engine
from db.models import Base
from medparse.settings import Settings
from runtime.migrate import alembic_config, downgrade, upgrade


def _revisions() -> list[str]:
    script = ScriptDirectory.from_config(alembic_config(Settings()))
    return [r.revision for r in reversed(list(script.walk_revisions()))]


@pytest.mark.parametrize("revision", _revisions())
def test_each_revision_upgrades_downgrades_and_upgrades_again(pg_url: str, revision: str) -> None:
    settings = Settings(database_url=pg_url)
    script = ScriptDirectory.from_config(alembic_config(settings))
    down_to = script.get_revision(revision).down_revision or "base"
    upgrade(settings, revision)
    downgrade(settings, str(down_to))
    upgrade(settings, revision)


def test_head_schema_matches_the_models(pg_url: str) -> None:
    settings = Settings(database_url=pg_url)
    upgrade(settings)
    engine = make_sync_engine(settings)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        tables = set(inspect(conn).get_table_names())
    engine.dispose()
    assert diff == []
    assert {"tenants", "api_keys", "jobs", "job_inputs", "job_masks"} <= tables


def test_downgrade_to_base_leaves_no_tables(pg_url: str) -> None:
    settings = Settings(database_url=pg_url)
    upgrade(settings)
    downgrade(settings, "base")
    engine = make_sync_engine(settings)
    with engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
    engine.dispose()
