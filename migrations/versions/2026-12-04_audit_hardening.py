"""What a compromised gateway login cannot do: mark migrations applied, forge or backdate audit entries.

Revision ID: 0008_audit_hardening
Revises: 0007_system_role_quota_audit
Create Date: 2026-12-04

- **alembic_version.** ``GRANT ... ON ALL TABLES IN SCHEMA public`` (0003 for ``medparse_app``, 0007
  for ``medparse_system``) also covered ``alembic_version``, so either role could UPDATE it and make
  a later migration look applied. Only the migrating role (the owner) reads or writes it; no code
  of the gateway or the workers reads it. The default privileges do not reach it (Alembic creates
  it before the first revision runs), but a later revision that grants ``ON ALL TABLES`` again must
  revoke it again.
- **audit_log.** ``actor`` is one of the values the code writes (``key`` and ``operator`` from
  gateway/audit.py, ``cli`` from medparse/cli.py), and a BEFORE INSERT trigger sets ``at`` to the
  transaction's ``now()`` whatever the inserting role sent, so no entry can be backdated. The
  trigger function needs no SECURITY DEFINER (it only assigns NEW.at); its search_path is fixed
  anyway.

PostgreSQL only: the embedded mode (SQLite) has no roles and a single trusted process.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008_audit_hardening"
down_revision: str | None = "0007_system_role_quota_audit"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "medparse_app"
SYSTEM_ROLE = "medparse_system"
ACTORS = "actor IN ('key', 'operator', 'cli')"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"REVOKE ALL ON alembic_version FROM {APP_ROLE}, {SYSTEM_ROLE}")
    op.create_check_constraint("ck__audit_log__actor_known", "audit_log", ACTORS)
    op.execute("""
        CREATE FUNCTION medparse_audit_log_stamp() RETURNS trigger
        LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
        BEGIN
            NEW.at := now();
            RETURN NEW;
        END $$""")
    op.execute(
        "CREATE TRIGGER audit_log_stamp BEFORE INSERT ON audit_log FOR EACH ROW "
        "EXECUTE FUNCTION medparse_audit_log_stamp()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS audit_log_stamp ON audit_log")
    op.execute("DROP FUNCTION IF EXISTS medparse_audit_log_stamp()")
    op.drop_constraint("ck__audit_log__actor_known", "audit_log", type_="check")
    # What 0003 and 0007 had granted on it.
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON alembic_version TO {APP_ROLE}, {SYSTEM_ROLE}")
