"""Row-level security on the webhook tables; image and mask bytes stored uncompressed.

Revision ID: 0006_webhook_rls_blob_storage
Revises: 0005_retention_index
Create Date: 2026-11-28

Both were first added by editing 0003_tenancy in place, which a database already past 0003 never
runs; this revision gives every database the same schema. It is written to run on either: the
policies are dropped before they are created, and the other statements are idempotent.

- The webhook tables get the tenant isolation the job tables have: endpoints, secrets and
  deliveries by ``tenant_id``; a job's webhook with its job; an attempt with its delivery.
- ``job_inputs.data`` and ``job_masks.data`` are PNG / zlib already: pglz trying to compress an
  incompressible 150 KB upload cost ~2 ms of every submit INSERT (0.8 ms without). ``EXTERNAL``
  stores them out of line as they are.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006_webhook_rls_blob_storage"
down_revision: str | None = "0005_retention_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TENANT_MATCH = (
    "(tenant_id = NULLIF(current_setting('medparse.tenant_id', true), '')::uuid "
    "OR current_setting('medparse.scope', true) = 'system')"
)
#: table -> which of its rows a tenant sees (a sub-select is itself filtered by its table's policy)
VISIBLE = {
    "webhook_endpoints": TENANT_MATCH,
    "webhook_tenant_secrets": TENANT_MATCH,
    "webhook_deliveries": TENANT_MATCH,
    "job_webhooks": "(EXISTS (SELECT 1 FROM jobs WHERE jobs.id = job_id))",
    "webhook_attempts": "(EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.id = delivery_id))",
}
BLOB_TABLES = ("job_inputs", "job_masks")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, visible in VISIBLE.items():
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {table}")
        op.execute(f"CREATE POLICY tenant_isolation ON {table} USING {visible} WITH CHECK {visible}")
    for table in BLOB_TABLES:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN data SET STORAGE EXTERNAL")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in BLOB_TABLES:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN data SET STORAGE EXTENDED")
    for table in VISIBLE:
        op.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {table}")
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
