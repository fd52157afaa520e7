"""Column types shared by the table definitions (db/models.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Dialect
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """``timestamptz``, read back as an aware UTC datetime from either database.

    PostgreSQL returns aware datetimes already; SQLite (the embedded default) has no time zone
    type: it stores the wall-clock fields as text and returns naive datetimes. So an aware value
    is converted to UTC before it is stored, and a naive one read back is UTC: marked so here,
    once, instead of by every reader.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        # Only SQLite needs it (it keeps wall-clock text); PostgreSQL's timestamptz takes the instant
        # as it is, and a bind processor there changed how the gateway's key lookups met a locked
        # table (tests/hostile/test_hostile_connections.py, the tiny-pool test).
        if value is None or value.tzinfo is None or dialect.name != "sqlite":
            return value
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None or value.tzinfo is not None:
            return value
        return value.replace(tzinfo=UTC)
