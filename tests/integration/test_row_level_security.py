"""Row-level security as defence in depth: the application role sees one tenant's rows or none."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from sqlalchemy.engine import make_url

from db import jobs as repo
from db.engine import make_sync_engine
from medparse.settings import Settings
from tests.support.factories import new_tenant
from tests.support.throwaway import throwaway_login_role

TENANT_TABLES = (
    "jobs", "job_inputs", "job_masks", "idempotency_keys", "job_medical", "webhook_endpoints",
    "webhook_tenant_secrets", "webhook_deliveries", "job_webhooks", "webhook_attempts",
)


@pytest.fixture
def app_role(pg_settings: Settings) -> Iterator[str]:
    """A login role that is a member of medparse_app: not the owner, not superuser, no BYPASSRLS."""
    with throwaway_login_role("medparse_app") as role:
        yield role


def _conninfo(settings: Settings, role: str) -> str:
    assert settings.database_url is not None
    url = make_url(settings.database_url).set(drivername="postgresql", username=role, password=None)
    return url.render_as_string(hide_password=False)


def _new_job(settings: Settings, tenant_id: uuid.UUID) -> uuid.UUID:
    job = repo.NewJob(
        id=uuid.uuid4(), tenant_id=tenant_id, prompts=["liver"], options={}, input_format="png",
        input_width=4, input_height=3, image=b"png bytes", now=datetime.now(UTC),
    )
    engine = make_sync_engine(settings, system_scope=True)
    with engine.begin() as conn:
        for stmt in repo.insert_job_statements(job):
            conn.execute(stmt)
    engine.dispose()
    return job.id


def test_a_query_without_its_tenant_filter_returns_nothing(pg_settings: Settings, app_role: str) -> None:
    tenant_a, _ = new_tenant(pg_settings)
    tenant_b, _ = new_tenant(pg_settings)
    job_a = _new_job(pg_settings, tenant_a)
    _new_job(pg_settings, tenant_b)
    with psycopg.connect(_conninfo(pg_settings, app_role)) as conn:
        # A repository bug that forgot "WHERE tenant_id = ..." and never set the tenant: no rows at all.
        assert conn.execute("SELECT id FROM jobs").fetchall() == []
        assert conn.execute("SELECT job_id FROM job_inputs").fetchall() == []
        conn.commit()
        conn.execute("SELECT set_config('medparse.tenant_id', %s, true)", (str(tenant_a),))
        assert conn.execute("SELECT id FROM jobs").fetchall() == [(job_a,)]
        assert conn.execute("SELECT job_id FROM job_inputs").fetchall() == [(job_a,)]
        conn.commit()
        # The next transaction on the same pooled connection did not inherit tenant A.
        assert conn.execute("SELECT id FROM jobs").fetchall() == []


def test_the_app_role_cannot_write_rows_for_another_tenant(pg_settings: Settings, app_role: str) -> None:
    tenant_a, _ = new_tenant(pg_settings)
    tenant_b, _ = new_tenant(pg_settings)
    with psycopg.connect(_conninfo(pg_settings, app_role)) as conn:
        conn.execute("SELECT set_config('medparse.tenant_id', %s, true)", (str(tenant_a),))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute(
                "INSERT INTO jobs (id, tenant_id, status, prompts, options, input_format, input_width, input_height,"
                " input_bytes, created_at, updated_at, attempts) VALUES (%s, %s, 'queued', '[]', '{}', 'png', 1, 1,"
                " 1, now(), now(), 0)",
                (uuid.uuid4(), tenant_b),
            )


def test_the_app_role_is_not_owner_superuser_or_bypassrls_and_rls_is_forced(
    pg_settings: Settings, app_role: str
) -> None:
    with psycopg.connect(_conninfo(pg_settings, app_role)) as conn:
        superuser, bypass = conn.execute(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
        ).fetchone() or (None, None)
        assert (superuser, bypass) == (False, False)
        rows = conn.execute(
            "SELECT relname, relrowsecurity, relforcerowsecurity, pg_get_userbyid(relowner) FROM pg_class"
            " WHERE relname = ANY(%s)", (list(TENANT_TABLES),)
        ).fetchall()
    assert {r[0] for r in rows} == set(TENANT_TABLES)
    for name, enabled, forced, owner in rows:
        assert enabled and forced, name
        assert owner != app_role, name


async def test_the_gateway_works_under_row_level_security(pg_settings: Settings, app_role: str) -> None:
    import base64

    from aiohttp.test_utils import TestClient, TestServer

    from gateway.app import create_app
    from tests.support.factories import organ_image

    assert pg_settings.database_url is not None
    as_app = make_url(pg_settings.database_url).set(username=app_role, password=None)
    settings = pg_settings.model_copy(update={"database_url": as_app.render_as_string(hide_password=False)})
    _, key = new_tenant(pg_settings)
    _, other = new_tenant(pg_settings)
    image, _ = organ_image()
    body = {"image_base64": base64.b64encode(image).decode(), "prompts": "liver"}
    async with TestClient(TestServer(create_app(settings))) as api:
        headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "rls"}
        created = await api.post("/v1/jobs", json=body, headers=headers)
        assert created.status == 202, await created.text()
        job = await created.json()
        replay = await api.post("/v1/jobs", json=body, headers=headers)
        assert (await replay.json())["id"] == job["id"]
        mine = await api.get(f"/v1/jobs/{job['id']}", headers={"Authorization": f"Bearer {key}"})
        assert mine.status == 200
        theirs = await api.get(f"/v1/jobs/{job['id']}", headers={"Authorization": f"Bearer {other}"})
        assert theirs.status == 404
        listing = await (await api.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"})).json()
        assert [j["id"] for j in listing["data"]] == [job["id"]]
        canceled = await api.post(f"/v1/jobs/{job['id']}/cancel", headers={"Authorization": f"Bearer {key}"})
        assert (await canceled.json())["status"] == "canceled"
        usage = await (await api.get("/v1/usage", headers={"Authorization": f"Bearer {key}"})).json()
        assert usage["jobs"] == {"canceled": 1}
        bearer = {"Authorization": f"Bearer {key}"}
        secret = await api.get("/v1/webhooks/default/secret", headers=bearer)
        assert secret.status == 200 and (await secret.json())["key"].startswith("whsec_")
        deliveries = await api.get(f"/v1/jobs/{job['id']}/deliveries", headers=bearer)
        assert deliveries.status == 200
        theirs = await api.get(f"/v1/jobs/{job['id']}/deliveries", headers={"Authorization": f"Bearer {other}"})
        assert theirs.status == 404


# --- Row-level security that no session setting switches off (issue 12, migration 0007) ---------
#
# The gateway's role picks the tenant of each transaction (medparse.tenant_id): what RLS adds is
# that a query which forgot its tenant, or a session that sets any other GUC, changes role or
# resets, sees and writes no other tenant's rows. Cross-tenant access is a property of the login
# role (a member of medparse_system), never of a setting.


@pytest.fixture
def system_role(pg_settings: Settings) -> Iterator[str]:
    """A login role in medparse_system, as the workers use (MEDPARSE_SYSTEM_DATABASE_URL)."""
    with throwaway_login_role("medparse_system") as role:
        yield role


def _owner_conninfo(settings: Settings) -> str:
    assert settings.database_url is not None
    return make_url(settings.database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def _as(settings: Settings, role: str) -> Settings:
    assert settings.database_url is not None
    url = make_url(settings.database_url).set(username=role, password=None).render_as_string(hide_password=False)
    return settings.model_copy(update={"database_url": url})


#: Things a session may try in order to see every tenant; each runs in its own transaction.
WIDENING_ATTEMPTS = (
    "SET medparse.scope = 'system'",
    "SET SESSION medparse.scope = 'system'",
    "SELECT set_config('medparse.scope', 'system', false)",
    "SELECT set_config('medparse.scope', 'system', true)",
    "RESET ROLE",
    "RESET ALL",
)


@pytest.mark.parametrize("attempt", WIDENING_ATTEMPTS)
def test_no_session_setting_lets_the_app_role_see_or_write_another_tenant(
    pg_settings: Settings, app_role: str, attempt: str
) -> None:
    tenant_a, _ = new_tenant(pg_settings)
    tenant_b, _ = new_tenant(pg_settings)
    job_a = _new_job(pg_settings, tenant_a)
    job_b = _new_job(pg_settings, tenant_b)
    with psycopg.connect(_conninfo(pg_settings, app_role), autocommit=True) as conn:
        conn.execute("SET medparse.scope = 'system'")  # for the whole session, before the attempt
        conn.execute(attempt)
        with conn.transaction():
            assert conn.execute("SELECT id FROM jobs").fetchall() == []
            assert conn.execute("SELECT job_id FROM job_inputs").fetchall() == []
            assert conn.execute("UPDATE jobs SET priority = 9 WHERE id = %s", (job_b,)).rowcount == 0
            assert conn.execute("DELETE FROM job_inputs WHERE job_id = %s", (job_b,)).rowcount == 0
        with conn.transaction():
            conn.execute(attempt)
            conn.execute("SELECT set_config('medparse.tenant_id', %s, true)", (str(tenant_a),))
            assert conn.execute("SELECT id FROM jobs").fetchall() == [(job_a,)]
            assert conn.execute("DELETE FROM jobs WHERE id = %s", (job_b,)).rowcount == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"), conn.transaction():
            conn.execute("SELECT set_config('medparse.tenant_id', %s, true)", (str(tenant_a),))
            conn.execute("UPDATE jobs SET tenant_id = %s WHERE id = %s", (tenant_b, job_a))
    with psycopg.connect(_owner_conninfo(pg_settings)) as admin:
        assert admin.execute("SELECT priority FROM jobs WHERE id = %s", (job_b,)).fetchone() == (0,)
        assert admin.execute("SELECT count(*) FROM job_inputs WHERE job_id = %s", (job_b,)).fetchone() == (1,)


@pytest.mark.parametrize("statement", [
    "SET ROLE medparse_system",
    "SET ROLE postgres",
    "SET SESSION AUTHORIZATION postgres",
    "ALTER TABLE jobs DISABLE ROW LEVEL SECURITY",
    "ALTER TABLE jobs NO FORCE ROW LEVEL SECURITY",
    "DROP POLICY tenant_isolation ON jobs",
    "CREATE POLICY everything ON jobs USING (true)",
    "ALTER ROLE CURRENT_USER BYPASSRLS",
    "GRANT medparse_system TO CURRENT_USER",
    "CREATE TABLE forged (tenant_id uuid, input_bytes bigint)",
    "ALTER TABLE jobs DISABLE TRIGGER usage_jobs_inserted",
    "UPDATE tenant_usage SET stored_bytes = 0",
])
def test_the_app_role_cannot_become_another_role_or_change_the_policies(
    pg_settings: Settings, app_role: str, statement: str
) -> None:
    with psycopg.connect(_conninfo(pg_settings, app_role), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)


def test_a_malformed_or_double_tenant_id_shows_nothing(pg_settings: Settings, app_role: str) -> None:
    tenant_a, _ = new_tenant(pg_settings)
    tenant_b, _ = new_tenant(pg_settings)
    _new_job(pg_settings, tenant_a)
    _new_job(pg_settings, tenant_b)
    with psycopg.connect(_conninfo(pg_settings, app_role), autocommit=True) as conn:
        for value in (f"{tenant_a},{tenant_b}", f"{tenant_a}' OR true --", "*"):
            with pytest.raises(psycopg.errors.InvalidTextRepresentation), conn.transaction():
                conn.execute("SELECT set_config('medparse.tenant_id', %s, true)", (value,))
                conn.execute("SELECT id FROM jobs")
        with conn.transaction():
            conn.execute("SELECT set_config('medparse.tenant_id', '', true)")
            assert conn.execute("SELECT id FROM jobs").fetchall() == []
        # row_security = off does not lift the policies: it makes a query they would filter fail.
        conn.execute("SET row_security = off")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute("SELECT id FROM jobs")


def test_the_system_role_sees_every_tenant_without_any_setting(pg_settings: Settings, system_role: str) -> None:
    tenant_a, _ = new_tenant(pg_settings)
    tenant_b, _ = new_tenant(pg_settings)
    jobs = {_new_job(pg_settings, tenant_a), _new_job(pg_settings, tenant_b)}
    with psycopg.connect(_conninfo(pg_settings, system_role)) as conn:
        assert {r[0] for r in conn.execute("SELECT id FROM jobs")} == jobs
        assert {r[0] for r in conn.execute("SELECT job_id FROM job_inputs")} == jobs
        assert conn.execute("UPDATE jobs SET priority = 1").rowcount == 2
        bypass = conn.execute("SELECT rolbypassrls, rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        assert bypass == (False, False)  # by policy, not by attribute


def test_the_audit_log_is_append_only_for_both_roles(pg_settings: Settings, app_role: str, system_role: str) -> None:
    insert = "INSERT INTO audit_log (at, actor, action) VALUES (now(), 'key', 'job.delete')"
    tenant_a, _ = new_tenant(pg_settings)
    tenant_b, _ = new_tenant(pg_settings)
    insert_for = "INSERT INTO audit_log (at, actor, action, tenant_id) VALUES (now(), 'key', 'job.delete', %s)"
    with psycopg.connect(_conninfo(pg_settings, app_role), autocommit=True) as conn:
        conn.execute(insert)
        conn.execute(insert_for, (tenant_a,))
        conn.execute(insert_for, (tenant_b,))
        conn.execute("SET medparse.scope = 'system'")
        assert conn.execute("SELECT count(*) FROM audit_log").fetchone() == (0,)  # no tenant: nothing
        with conn.transaction():
            conn.execute("SELECT set_config('medparse.tenant_id', %s, true)", (str(tenant_a),))
            # the CLI's tenant.create and key.mint (tests.support.factories.new_tenant), and ours
            assert conn.execute("SELECT DISTINCT tenant_id FROM audit_log").fetchall() == [(tenant_a,)]
            assert conn.execute("SELECT count(*) FROM audit_log WHERE actor = 'key'").fetchone() == (1,)
        for statement in ("UPDATE audit_log SET action = 'x'", "DELETE FROM audit_log", "TRUNCATE audit_log"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    with psycopg.connect(_conninfo(pg_settings, system_role), autocommit=True) as conn:
        conn.execute(insert)
        assert conn.execute("SELECT count(*) FROM audit_log WHERE actor = 'key'").fetchone() == (4,)
        assert conn.execute("SELECT count(*) FROM audit_log WHERE actor = 'cli'").fetchone() == (4,)
        for statement in ("UPDATE audit_log SET action = 'x'", "DELETE FROM audit_log", "TRUNCATE audit_log"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_the_app_role_reads_but_cannot_reset_its_stored_bytes(pg_settings: Settings, app_role: str) -> None:
    tenant_a, _ = new_tenant(pg_settings)
    tenant_b, _ = new_tenant(pg_settings)
    _new_job(pg_settings, tenant_a)
    _new_job(pg_settings, tenant_b)
    with psycopg.connect(_conninfo(pg_settings, app_role), autocommit=True) as conn, conn.transaction():
        conn.execute("SELECT set_config('medparse.tenant_id', %s, true)", (str(tenant_a),))
        assert conn.execute("SELECT tenant_id, stored_bytes FROM tenant_usage").fetchall() == [
            (tenant_a, len(b"png bytes"))
        ]
        for statement in ("UPDATE tenant_usage SET stored_bytes = 0", "DELETE FROM tenant_usage"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                conn.execute(statement)


@pytest.mark.parametrize("statement", [
    "UPDATE alembic_version SET version_num = 'forged'",
    "SELECT version_num FROM alembic_version",
    "DELETE FROM alembic_version",
    "INSERT INTO alembic_version (version_num) VALUES ('forged')",
])
def test_neither_role_can_read_or_mark_migrations_applied(
    pg_settings: Settings, app_role: str, system_role: str, statement: str
) -> None:
    for role in (app_role, system_role):
        with psycopg.connect(_conninfo(pg_settings, role), autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    with psycopg.connect(_owner_conninfo(pg_settings)) as owner:
        (version,) = owner.execute("SELECT version_num FROM alembic_version").fetchall()  # one row, untouched
        assert version[0] != "forged"


def test_an_audit_entry_has_a_known_actor(pg_settings: Settings, app_role: str) -> None:
    with psycopg.connect(_conninfo(pg_settings, app_role), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.CheckViolation, match="ck__audit_log__actor_known"):
            conn.execute("INSERT INTO audit_log (at, actor, action) VALUES (now(), 'root', 'job.delete')")
    with psycopg.connect(_owner_conninfo(pg_settings)) as owner:
        assert owner.execute("SELECT count(*) FROM audit_log WHERE actor = 'root'").fetchone() == (0,)


def test_an_audit_entry_cannot_be_backdated(pg_settings: Settings, app_role: str) -> None:
    with psycopg.connect(_conninfo(pg_settings, app_role), autocommit=True) as conn:
        with conn.transaction():
            now = conn.execute("SELECT now()").fetchone()
            conn.execute(
                "INSERT INTO audit_log (at, actor, action, target) "
                "VALUES ('2000-01-01T00:00:00Z', 'key', 'job.delete', 'backdated')"
            )
    with psycopg.connect(_owner_conninfo(pg_settings)) as owner:
        rows = owner.execute("SELECT at FROM audit_log WHERE target = 'backdated'").fetchall()
        assert now is not None and rows == [(now[0],)]
