"""Medical inputs and outputs: input details and progress on jobs, the job_medical table.

Revision ID: 0004_medical
Revises: 0003_tenancy
Create Date: 2026-11-27

``jobs.input_meta`` holds what the submit-time probe learned about a DICOM or NIfTI upload (frames,
volume shape, slice axis); ``jobs.progress`` the ``{"done", "total"}`` of a running volume job.
``job_medical`` keeps, per job with a medical input, the source header that DICOM SEG and NIfTI
outputs copy (so they work after the input is deleted) and, for a volume, its masks.
On PostgreSQL ``job_medical`` gets the same row-level security as ``job_masks`` (visible with its job).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_medical"
down_revision: str | None = "0003_tenancy"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VISIBLE_WITH_JOB = "(EXISTS (SELECT 1 FROM jobs WHERE jobs.id = job_id))"


def upgrade() -> None:
    op.add_column("jobs", sa.Column("input_meta", sa.JSON(), nullable=True))
    op.add_column("jobs", sa.Column("progress", sa.JSON(), nullable=True))
    op.create_table(
        "job_medical",
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("source_kind", sa.String(length=16), nullable=False),
        sa.Column("source_header", sa.LargeBinary(), nullable=True),
        sa.Column("volume_shape", sa.JSON(), nullable=True),
        sa.Column("slice_axis", sa.Integer(), nullable=True),
        sa.Column("affine", sa.JSON(), nullable=True),
        sa.Column("encoding", sa.String(length=32), nullable=True),
        sa.Column("data", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk__job_medical__job_id__jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", name="pk__job_medical"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE job_medical ENABLE ROW LEVEL SECURITY")
        op.execute("ALTER TABLE job_medical FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON job_medical USING {VISIBLE_WITH_JOB} WITH CHECK {VISIBLE_WITH_JOB}"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP POLICY IF EXISTS tenant_isolation ON job_medical")
    op.drop_table("job_medical")
    op.drop_column("jobs", "progress")
    op.drop_column("jobs", "input_meta")
