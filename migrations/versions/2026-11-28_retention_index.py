"""An index for the retention purge: finished jobs by completion time.

Revision ID: 0005_retention_index
Revises: 0004_medical
Create Date: 2026-11-28

The sweeper deletes jobs that finished before the retention horizon, a bounded batch per sweep.
Without an index each sweep scanned every finished job; this one holds finished jobs only
(queued and running ones have no ``completed_at``), so it costs nothing on the submit path.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_retention_index"
down_revision: str | None = "0004_medical"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FINISHED = sa.text("completed_at IS NOT NULL")


def upgrade() -> None:
    op.create_index(
        "ix__jobs__completed", "jobs", ["completed_at"], postgresql_where=FINISHED, sqlite_where=FINISHED
    )


def downgrade() -> None:
    op.drop_index("ix__jobs__completed", table_name="jobs")
