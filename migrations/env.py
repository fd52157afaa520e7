"""Alembic environment. The URL comes from Settings (passed in by ``medparse migrate`` or tests)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from db.engine import make_sync_engine
from db.models import Base
from medparse.settings import Settings

config = context.config
settings: Settings = config.attributes.get("settings") or Settings()


def run_with(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=settings.sync_database_url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_with(connection)
    else:
        engine = make_sync_engine(settings)
        with engine.connect() as conn:
            run_with(conn)
        engine.dispose()
