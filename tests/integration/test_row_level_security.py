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
from tests.factories import new_tenant
from tests.support.throwaway import admin_conninfo as _admin_conninfo

TENANT_TABLES = (
    "jobs", "job_inputs", "job_masks", "idempotency_keys", "job_medical", "webhook_endpoints",
    "webhook_tenant_secrets", "webhook_deliveries", "job_webhooks", "webhook_attempts",
)


@pytest.fixture
def app_role(pg_settings: Settings) -> Iterator[str]:
    """A login role that is a member of medparse_app: not the owner, not superuser, no BYPASSRLS."""
    role = f"medparse_app_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(_admin_conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS IN ROLE medparse_app")
    try:
        yield role
    finally:
        with psycopg.connect(_admin_conninfo(), autocommit=True) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {role}")


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
    from tests.factories import organ_image

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
