"""Row-level security no GUC can switch off; stored bytes per tenant; an append-only audit log.

Revision ID: 0007_system_role_quota_audit
Revises: 0006_webhook_rls_blob_storage
Create Date: 2026-12-04

- **Roles.** Until now every policy also admitted any session that ran ``SET medparse.scope =
  'system'``, so the gateway's role could read every tenant by setting a GUC. The policies now honour
  ``medparse.tenant_id`` only; cross-tenant access (dispatcher, sweeper, retention, webhook dispatch,
  the CLI) is a second policy granted to the NOLOGIN role ``medparse_system``. Workers log in as a
  member of ``medparse_system``, the gateway as a member of ``medparse_app`` only, so ``SET ROLE
  medparse_system`` fails for it. Policies, unlike the BYPASSRLS attribute, apply through role
  membership, so neither login role needs any attribute. Roles are cluster-wide: they are created
  only if missing (several databases of one cluster migrate at once in the tests), privileges are
  granted per database.
- **tenant_usage.** Each tenant's stored bytes (inputs + masks + medical outputs), kept by triggers
  in the transaction that stores or deletes them: the submit path reads one row instead of summing
  every job, and no code path (gateway insert, worker result, input deletion, job deletion,
  retention purge) can forget to count. The trigger functions are SECURITY DEFINER, so the
  application roles only read the counter (the gateway cannot reset its own usage).
  ``tenants.max_stored_bytes`` overrides the deployment's default quota.
- **audit_log.** Who read or deleted what: the application roles may INSERT and SELECT (the
  gateway's role one tenant's rows at a time, under row-level security) but neither may UPDATE or
  DELETE; only the owner can prune it.

The migrating role owns the tables and functions; it must be a superuser or have BYPASSRLS (the
trigger functions read ``jobs`` of any tenant), as the postgres image's POSTGRES_USER is.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_system_role_quota_audit"
down_revision: str | None = "0006_webhook_rls_blob_storage"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "medparse_app"
SYSTEM_ROLE = "medparse_system"
TENANT_MATCH = "(tenant_id = NULLIF(current_setting('medparse.tenant_id', true), '')::uuid)"
OLD_TENANT_MATCH = (
    "(tenant_id = NULLIF(current_setting('medparse.tenant_id', true), '')::uuid "
    "OR current_setting('medparse.scope', true) = 'system')"
)
WITH_JOB = "(EXISTS (SELECT 1 FROM jobs WHERE jobs.id = job_id))"
WITH_DELIVERY = "(EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.id = delivery_id))"
#: table -> which of its rows a tenant sees (sub-selects are filtered by their own table's policy)
VISIBLE = {
    "jobs": TENANT_MATCH,
    "idempotency_keys": TENANT_MATCH,
    "job_inputs": WITH_JOB,
    "job_masks": WITH_JOB,
    "job_medical": WITH_JOB,
    "webhook_endpoints": TENANT_MATCH,
    "webhook_tenant_secrets": TENANT_MATCH,
    "webhook_deliveries": TENANT_MATCH,
    "job_webhooks": WITH_JOB,
    "webhook_attempts": WITH_DELIVERY,
}
OLD_VISIBLE = {t: (OLD_TENANT_MATCH if v == TENANT_MATCH else v) for t, v in VISIBLE.items()}
#: blob table -> the bytes one of its rows ``{r}`` stores (octet_length reads a TOAST pointer's size,
#: it does not fetch the value)
STORED = {
    "job_masks": "octet_length({r}data)",
    "job_medical": "coalesce(octet_length({r}source_header), 0) + coalesce(octet_length({r}data), 0)",
}
DEFINER = "LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp"


def upgrade() -> None:
    op.add_column("tenants", sa.Column("max_stored_bytes", sa.BigInteger(), nullable=True))
    op.create_table(
        "tenant_usage",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("stored_bytes", sa.BigInteger(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk__tenant_usage__tenant_id__tenants", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tenant_id", name="pk__tenant_usage"),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), sa.Identity(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=16), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("key_id", sa.String(length=32), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("target", sa.String(length=200), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk__audit_log"),
    )
    op.create_index("ix__audit_log__tenant_id_at", "audit_log", ["tenant_id", "at"])
    op.create_index("ix__audit_log__job_id", "audit_log", ["job_id"])
    op.create_index("ix__audit_log__at", "audit_log", ["at"])
    if op.get_bind().dialect.name == "postgresql":
        _roles_and_policies()
        _usage_triggers()
        _append_only_audit()
    elif op.get_bind().dialect.name == "sqlite":
        _sqlite_usage_triggers()


def _create_role(role: str) -> None:
    # IF NOT EXISTS for the common case; the handler for two databases creating it at once.
    op.execute(
        f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN "
        f"CREATE ROLE {role} NOLOGIN NOSUPERUSER NOBYPASSRLS; END IF; "
        "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
    )


def _roles_and_policies() -> None:
    _create_role(APP_ROLE)
    _create_role(SYSTEM_ROLE)
    op.execute(f"GRANT USAGE ON SCHEMA public TO {SYSTEM_ROLE}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {SYSTEM_ROLE}")
    op.execute(
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {SYSTEM_ROLE}"
    )
    for table, visible in VISIBLE.items():
        op.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {table}")
        op.execute(f"CREATE POLICY tenant_isolation ON {table} USING {visible} WITH CHECK {visible}")
        # Permissive policies are OR'ed: for the system role "... OR true" folds to true at plan time.
        op.execute(f"CREATE POLICY system_access ON {table} TO {SYSTEM_ROLE} USING (true) WITH CHECK (true)")
    op.execute("ALTER TABLE tenant_usage ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE tenant_usage FORCE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY tenant_isolation ON tenant_usage USING {TENANT_MATCH}")
    op.execute(f"CREATE POLICY system_access ON tenant_usage TO {SYSTEM_ROLE} USING (true) WITH CHECK (true)")
    # Only the trigger functions (running as the owner) write the counter.
    op.execute(f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON tenant_usage FROM {APP_ROLE}")


def _usage_triggers() -> None:
    # New jobs: their input's size is jobs.input_bytes (a statement-level trigger: one upsert per
    # tenant for the gateway's multi-row INSERT, and the job rows it reads carry no blob).
    op.execute(f"""
        CREATE FUNCTION medparse_usage_jobs_inserted() RETURNS trigger {DEFINER} AS $$
        BEGIN
            INSERT INTO public.tenant_usage AS u (tenant_id, stored_bytes)
            SELECT tenant_id, sum(input_bytes) FROM added GROUP BY tenant_id
            ON CONFLICT (tenant_id) DO UPDATE SET stored_bytes = u.stored_bytes + EXCLUDED.stored_bytes;
            RETURN NULL;
        END $$""")
    op.execute(
        "CREATE TRIGGER usage_jobs_inserted AFTER INSERT ON jobs REFERENCING NEW TABLE AS added "
        "FOR EACH STATEMENT EXECUTE FUNCTION medparse_usage_jobs_inserted()"
    )
    # A deleted job frees whatever of it is still stored (its children go by ON DELETE CASCADE
    # afterwards, when the job row is no longer visible to the children's delete triggers below).
    op.execute(f"""
        CREATE FUNCTION medparse_usage_job_deleted() RETURNS trigger {DEFINER} AS $$
        DECLARE freed bigint;
        BEGIN
            freed := coalesce((SELECT sum(octet_length(data)) FROM public.job_inputs WHERE job_id = OLD.id), 0)
                + coalesce((SELECT sum({STORED['job_masks'].format(r='')}) FROM public.job_masks
                            WHERE job_id = OLD.id), 0)
                + coalesce((SELECT sum({STORED['job_medical'].format(r='')}) FROM public.job_medical
                            WHERE job_id = OLD.id), 0);
            IF freed <> 0 THEN
                UPDATE public.tenant_usage SET stored_bytes = stored_bytes - freed WHERE tenant_id = OLD.tenant_id;
            END IF;
            RETURN OLD;
        END $$""")
    op.execute(
        "CREATE TRIGGER usage_job_deleted BEFORE DELETE ON jobs FOR EACH ROW "
        "EXECUTE FUNCTION medparse_usage_job_deleted()"
    )
    # A child row deleted while its job stays (the input after success): the join finds the job.
    for table, size in {"job_inputs": "octet_length({r}data)", **STORED}.items():
        op.execute(f"""
            CREATE FUNCTION medparse_usage_{table}_deleted() RETURNS trigger {DEFINER} AS $$
            BEGIN
                UPDATE public.tenant_usage u SET stored_bytes = u.stored_bytes - f.freed
                FROM (SELECT j.tenant_id, sum({size.format(r='r.')}) AS freed
                      FROM removed r JOIN public.jobs j ON j.id = r.job_id GROUP BY j.tenant_id) f
                WHERE u.tenant_id = f.tenant_id;
                RETURN NULL;
            END $$""")
        op.execute(
            f"CREATE TRIGGER usage_{table}_deleted AFTER DELETE ON {table} REFERENCING OLD TABLE AS removed "
            f"FOR EACH STATEMENT EXECUTE FUNCTION medparse_usage_{table}_deleted()"
        )
    # Results: row-level BEFORE INSERT, so a large medical volume is never copied into a transition table.
    for table, size in STORED.items():
        op.execute(f"""
            CREATE FUNCTION medparse_usage_{table}_inserted() RETURNS trigger {DEFINER} AS $$
            DECLARE added bigint := {size.format(r='NEW.')};
            BEGIN
                IF added <> 0 THEN
                    INSERT INTO public.tenant_usage AS u (tenant_id, stored_bytes)
                    SELECT tenant_id, added FROM public.jobs WHERE id = NEW.job_id
                    ON CONFLICT (tenant_id) DO UPDATE SET stored_bytes = u.stored_bytes + EXCLUDED.stored_bytes;
                END IF;
                RETURN NEW;
            END $$""")
        op.execute(
            f"CREATE TRIGGER usage_{table}_inserted BEFORE INSERT ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION medparse_usage_{table}_inserted()"
        )
    # Only triggers call them: no role may attach one to a table of its own to forge counts.
    functions = ["medparse_usage_jobs_inserted", "medparse_usage_job_deleted",
                 *(f"medparse_usage_{t}_deleted" for t in ("job_inputs", *STORED)),
                 *(f"medparse_usage_{t}_inserted" for t in STORED)]
    op.execute(f"REVOKE EXECUTE ON FUNCTION {', '.join(f + '()' for f in functions)} FROM PUBLIC")
    # What is stored already (a database migrated with jobs in it).
    op.execute(f"""
        INSERT INTO tenant_usage (tenant_id, stored_bytes)
        SELECT j.tenant_id,
               sum(coalesce((SELECT octet_length(data) FROM job_inputs i WHERE i.job_id = j.id), 0)
                   + coalesce((SELECT sum({STORED['job_masks'].format(r='m.')}) FROM job_masks m
                               WHERE m.job_id = j.id), 0)
                   + coalesce((SELECT sum({STORED['job_medical'].format(r='x.')}) FROM job_medical x
                               WHERE x.job_id = j.id), 0))
        FROM jobs j GROUP BY j.tenant_id""")


#: The embedded mode's triggers (SQLite has row-level triggers only; a job's children, deleted by
#: its cascade, no longer find it, as in PostgreSQL). ``{r}`` is the row.
SQLITE_STORED = {
    "job_inputs": "coalesce(length({r}data), 0)",
    "job_masks": "coalesce(length({r}data), 0)",
    "job_medical": "coalesce(length({r}source_header), 0) + coalesce(length({r}data), 0)",
}


def _sqlite_usage_triggers() -> None:
    op.execute(
        "CREATE TRIGGER usage_jobs_inserted AFTER INSERT ON jobs BEGIN "
        "INSERT INTO tenant_usage (tenant_id, stored_bytes) VALUES (NEW.tenant_id, NEW.input_bytes) "
        "ON CONFLICT (tenant_id) DO UPDATE SET stored_bytes = stored_bytes + excluded.stored_bytes; END"
    )
    freed = " + ".join(
        f"coalesce((SELECT sum({size.format(r='')}) FROM {table} WHERE job_id = OLD.id), 0)"
        for table, size in SQLITE_STORED.items()
    )
    op.execute(
        "CREATE TRIGGER usage_job_deleted BEFORE DELETE ON jobs BEGIN "
        f"UPDATE tenant_usage SET stored_bytes = stored_bytes - ({freed}) WHERE tenant_id = OLD.tenant_id; END"
    )
    for table, size in SQLITE_STORED.items():
        op.execute(
            f"CREATE TRIGGER usage_{table}_deleted AFTER DELETE ON {table} BEGIN "
            f"UPDATE tenant_usage SET stored_bytes = stored_bytes - ({size.format(r='OLD.')}) "
            "WHERE tenant_id = (SELECT tenant_id FROM jobs WHERE id = OLD.job_id); END"
        )
        if table != "job_inputs":  # an input is counted with its job (jobs.input_bytes)
            op.execute(
                f"CREATE TRIGGER usage_{table}_inserted AFTER INSERT ON {table} BEGIN "
                "INSERT INTO tenant_usage (tenant_id, stored_bytes) "
                f"SELECT tenant_id, {size.format(r='NEW.')} FROM jobs WHERE id = NEW.job_id AND true "
                "ON CONFLICT (tenant_id) DO UPDATE SET stored_bytes = stored_bytes + excluded.stored_bytes; END"
            )
    per_job = " + ".join(
        f"coalesce((SELECT sum({size.format(r='')}) FROM {table} WHERE job_id = jobs.id), 0)"
        for table, size in SQLITE_STORED.items()
    )
    op.execute(f"INSERT INTO tenant_usage (tenant_id, stored_bytes) SELECT tenant_id, sum({per_job}) FROM jobs "
               "GROUP BY tenant_id")


def _append_only_audit() -> None:
    # Default privileges gave both roles UPDATE and DELETE on the new table: take them back.
    op.execute(f"REVOKE ALL ON audit_log FROM {APP_ROLE}, {SYSTEM_ROLE}")
    op.execute(f"GRANT SELECT, INSERT ON audit_log TO {APP_ROLE}, {SYSTEM_ROLE}")
    # The gateway records entries about any tenant (an operator's action has no tenant scope) but
    # reads one tenant's entries at a time (the operator route names the tenant); the CLI reads all.
    op.execute("ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE audit_log FORCE ROW LEVEL SECURITY")
    op.execute("CREATE POLICY append ON audit_log FOR INSERT WITH CHECK (true)")
    op.execute(f"CREATE POLICY tenant_isolation ON audit_log FOR SELECT USING {TENANT_MATCH}")
    op.execute(f"CREATE POLICY system_access ON audit_log FOR SELECT TO {SYSTEM_ROLE} USING (true)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in ("job_inputs", *STORED):
            op.execute(f"DROP TRIGGER IF EXISTS usage_{table}_deleted ON {table}")
            op.execute(f"DROP FUNCTION IF EXISTS medparse_usage_{table}_deleted()")
        for table in STORED:
            op.execute(f"DROP TRIGGER IF EXISTS usage_{table}_inserted ON {table}")
            op.execute(f"DROP FUNCTION IF EXISTS medparse_usage_{table}_inserted()")
        op.execute("DROP TRIGGER IF EXISTS usage_job_deleted ON jobs")
        op.execute("DROP FUNCTION IF EXISTS medparse_usage_job_deleted()")
        op.execute("DROP TRIGGER IF EXISTS usage_jobs_inserted ON jobs")
        op.execute("DROP FUNCTION IF EXISTS medparse_usage_jobs_inserted()")
        for table, visible in OLD_VISIBLE.items():
            op.execute(f"DROP POLICY IF EXISTS system_access ON {table}")
            op.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {table}")
            op.execute(f"CREATE POLICY tenant_isolation ON {table} USING {visible} WITH CHECK {visible}")
        op.execute(
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public "
            f"REVOKE SELECT, INSERT, UPDATE, DELETE ON TABLES FROM {SYSTEM_ROLE}"
        )
        op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {SYSTEM_ROLE}")
        op.execute(f"REVOKE USAGE ON SCHEMA public FROM {SYSTEM_ROLE}")
    elif op.get_bind().dialect.name == "sqlite":
        for trigger in ("usage_jobs_inserted", "usage_job_deleted", *(f"usage_{t}_deleted" for t in SQLITE_STORED),
                        "usage_job_masks_inserted", "usage_job_medical_inserted"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    op.drop_index("ix__audit_log__at", table_name="audit_log")
    op.drop_index("ix__audit_log__job_id", table_name="audit_log")
    op.drop_index("ix__audit_log__tenant_id_at", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_table("tenant_usage")
    op.drop_column("tenants", "max_stored_bytes")
