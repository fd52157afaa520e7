"""Tenant quotas, key labels, job priority and usage counters, idempotency keys, row-level security.

Revision ID: 0003_tenancy
Revises: 0002_webhooks
Create Date: 2026-11-27

On PostgreSQL the tenant tables get row-level security (FORCE, so the owner is subject to it too)
and the NOLOGIN role ``medparse_app`` gets table privileges; the application should log in as a
role that is a member of ``medparse_app`` and is neither the owner nor a superuser. The gateway
sets ``medparse.tenant_id`` in every transaction; workers, the sweeper and the CLI act for the
system and connect with ``medparse.scope=system``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_tenancy"
down_revision: str | None = "0002_webhooks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
APP_ROLE = "medparse_app"
#: Tables holding one tenant's data. job_inputs and job_masks follow their job's visibility.
TENANT_TABLES = ("jobs", "idempotency_keys")
JOB_CHILD_TABLES = ("job_inputs", "job_masks")
TENANT_MATCH = (
    "(tenant_id = NULLIF(current_setting('medparse.tenant_id', true), '')::uuid "
    "OR current_setting('medparse.scope', true) = 'system')"
)


def upgrade() -> None:
    op.add_column("tenants", sa.Column("rate_limit_rps", sa.Float(), nullable=True))
    op.add_column("tenants", sa.Column("max_queued_jobs", sa.Integer(), nullable=True))
    op.add_column("tenants", sa.Column("max_running_jobs", sa.Integer(), nullable=True))
    op.add_column("tenants", sa.Column("max_image_bytes", sa.Integer(), nullable=True))
    op.add_column("api_keys", sa.Column("label", sa.String(length=100), nullable=True))
    op.add_column("jobs", sa.Column("priority", sa.Integer(), server_default="0", nullable=False))
    op.add_column("jobs", sa.Column("prompt_count", sa.Integer(), server_default="0", nullable=False))
    op.add_column("jobs", sa.Column("endpoint_calls", sa.Integer(), server_default="0", nullable=False))
    op.add_column("jobs", sa.Column("endpoint_seconds", sa.Float(), server_default="0", nullable=False))
    op.create_index("ix__jobs__tenant_status", "jobs", ["tenant_id", "status"])
    # The dispatcher reads each tenant's next jobs off this index (workers/dispatcher.py).
    op.create_index(
        "ix__jobs__undispatched", "jobs", ["tenant_id", sa.text("priority DESC"), "created_at", "id"],
        postgresql_where=sa.text("status = 'queued' AND dispatched_at IS NULL"),
        sqlite_where=sa.text("status = 'queued' AND dispatched_at IS NULL"),
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("response_headers", sa.JSON(), nullable=True),
        sa.Column("response_body", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("locked_until", TS, nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk__idempotency_keys__tenant_id__tenants", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk__idempotency_keys__job_id__jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tenant_id", "key", name="pk__idempotency_keys"),
    )
    op.create_index("ix__idempotency_keys__created_at", "idempotency_keys", ["created_at"])
    if op.get_bind().dialect.name == "postgresql":
        _enable_row_level_security()


def _enable_row_level_security() -> None:
    op.execute(
        f"DO $$ BEGIN CREATE ROLE {APP_ROLE} NOLOGIN; "
        "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )
    op.execute(f"GRANT USAGE ON SCHEMA public TO {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP_ROLE}")
    # Tables of later revisions, created by the same migrating role, get the same privileges.
    op.execute(
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {APP_ROLE}"
    )
    for table in TENANT_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY tenant_isolation ON {table} USING {TENANT_MATCH} WITH CHECK {TENANT_MATCH}")
    for table in JOB_CHILD_TABLES:
        # The sub-select is itself filtered by the jobs policy: a child row is visible with its job.
        visible = "(EXISTS (SELECT 1 FROM jobs WHERE jobs.id = job_id))"
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY tenant_isolation ON {table} USING {visible} WITH CHECK {visible}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in (*TENANT_TABLES, *JOB_CHILD_TABLES):
            op.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {table}")
            op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
            op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
        op.execute(
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE SELECT, INSERT, UPDATE, DELETE ON TABLES FROM {APP_ROLE}"
        )
        op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {APP_ROLE}")
        op.execute(f"REVOKE USAGE ON SCHEMA public FROM {APP_ROLE}")
    op.drop_index("ix__idempotency_keys__created_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.drop_index("ix__jobs__undispatched", table_name="jobs")
    op.drop_index("ix__jobs__tenant_status", table_name="jobs")
    for column in ("endpoint_seconds", "endpoint_calls", "prompt_count", "priority"):
        op.drop_column("jobs", column)
    op.drop_column("api_keys", "label")
    for column in ("max_image_bytes", "max_running_jobs", "max_queued_jobs", "rate_limit_rps"):
        op.drop_column("tenants", column)
