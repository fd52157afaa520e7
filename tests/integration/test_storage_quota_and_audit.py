"""Stored bytes per tenant (tenant_usage, kept by triggers), the storage quota at submit, the
audit log, and the workers' system paths running as a medparse_system login role (migration 0007)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr
from sqlalchemy import insert, select, text, update

from db import audit
from db import jobs as repo
from db.engine import make_sync_engine
from db.models import Job, JobMedical, Tenant, TenantUsage
from emulator.config import EmulatorConfig
from medparse.settings import Settings
from tests.support.emulator_server import running_emulator
from tests.support.factories import new_tenant, organ_image
from tests.support.throwaway import throwaway_login_role

KEY = "emulator-test-key"




@pytest.fixture
def app_role(pg_settings: Settings) -> Iterator[str]:
    with throwaway_login_role("medparse_app") as role:
        yield role


@pytest.fixture
def system_role(pg_settings: Settings) -> Iterator[str]:
    with throwaway_login_role("medparse_system") as role:
        yield role


def _url_as(settings: Settings, role: str) -> str:
    from sqlalchemy.engine import make_url

    assert settings.database_url is not None
    return make_url(settings.database_url).set(username=role, password=None).render_as_string(hide_password=False)


def _stored(settings: Settings, tenant_id: uuid.UUID) -> int:
    engine = make_sync_engine(settings)
    with engine.begin() as conn:
        value = conn.execute(select(TenantUsage.stored_bytes).where(TenantUsage.tenant_id == tenant_id)).scalar()
    engine.dispose()
    return int(value or 0)


def _new_job(conn: object, tenant_id: uuid.UUID, image: bytes) -> uuid.UUID:
    job = repo.NewJob(
        id=uuid.uuid4(), tenant_id=tenant_id, prompts=["liver"], options={}, input_format="png",
        input_width=4, input_height=3, image=image, now=datetime.now(UTC),
    )
    for stmt in repo.insert_job_statements(job):
        conn.execute(stmt)  # type: ignore[attr-defined]
    return job.id


def test_stored_bytes_follow_every_insert_and_delete(pg_settings: Settings, system_role: str) -> None:
    settings = pg_settings.model_copy(update={"system_database_url": _url_as(pg_settings, system_role)})
    _exercise_stored_bytes(settings, pg_settings)


def test_stored_bytes_are_counted_in_the_embedded_mode_too(embedded_settings: Settings) -> None:
    _exercise_stored_bytes(embedded_settings, embedded_settings)


def _exercise_stored_bytes(settings: Settings, pg_settings: Settings) -> None:
    """Every way bytes come and go, through ``settings``' system engine; read as ``pg_settings``' owner."""
    engine = make_sync_engine(settings, system_scope=True)
    tenant_a, _ = new_tenant(pg_settings)
    tenant_b, _ = new_tenant(pg_settings)
    with engine.begin() as conn:  # a multi-tenant statement, as the gateway's group commit is not
        job_1 = _new_job(conn, tenant_a, b"x" * 1000)
        job_2 = _new_job(conn, tenant_a, b"y" * 500)
        job_3 = _new_job(conn, tenant_b, b"z" * 70)
    assert (_stored(pg_settings, tenant_a), _stored(pg_settings, tenant_b)) == (1500, 70)
    with engine.begin() as conn:  # a worker's result: masks and the medical row
        conn.execute(repo.INSERT_MASKS, [
            {"job_id": job_1, "index": i, "prompt": "liver", "label": "liver", "area_px": 1, "bbox": None,
             "height": 3, "width": 4, "encoding": "zlib", "data": b"m" * 100} for i in range(2)
        ])
        conn.execute(
            insert(JobMedical).values(job_id=job_1, source_kind="dicom", source_header=b"h" * 40, data=b"d" * 60)
        )
    assert _stored(pg_settings, tenant_a) == 1500 + 200 + 100
    with engine.begin() as conn:  # the input deleted after success (retention_delete_input_on_success)
        conn.execute(repo.delete_input_stmt(job_1))
    assert _stored(pg_settings, tenant_a) == 500 + 200 + 100
    with engine.begin() as conn:  # a job deleted: everything of it, counted once (not again by the cascade)
        conn.execute(repo.delete_job_stmt(tenant_a, job_1))
    assert _stored(pg_settings, tenant_a) == 500
    with engine.begin() as conn:  # the retention purge, across tenants
        conn.execute(update(Job).where(Job.id.in_([job_2, job_3])).values(
            status="canceled", completed_at=datetime.now(UTC) - timedelta(days=400)
        ))
        assert conn.execute(repo.purge_finished_stmt(completed_before=datetime.now(UTC), limit=10)).rowcount == 2
    assert (_stored(pg_settings, tenant_a), _stored(pg_settings, tenant_b)) == (0, 0)
    with engine.begin() as conn:  # a rolled back insert counts nothing
        _new_job(conn, tenant_b, b"q" * 10)
        conn.rollback()
    assert _stored(pg_settings, tenant_b) == 0
    engine.dispose()


def test_the_workers_system_paths_run_as_a_system_login_role(pg_settings: Settings, system_role: str) -> None:
    from workers.celery_app import make_celery
    from workers.context import ContextHolder
    from workers.dispatcher import dispatch_round
    from workers.sweeper import sweep_once
    from workers.tasks import run_job

    with running_emulator(EmulatorConfig(keys=[KEY])) as emulator:
        settings = pg_settings.model_copy(update={
            "system_database_url": _url_as(pg_settings, system_role), "retention_days": 0.0,
            "endpoint_scoring_uri": f"{emulator}/score", "endpoint_key": SecretStr(KEY),
        })
        ctx = ContextHolder(settings, make_celery(settings, sweeper=False)).get()
        try:
            with ctx.engine.connect() as conn:
                assert conn.execute(text("SELECT current_user")).scalar() == system_role
            image, _ = organ_image()
            tenant_a, _ = new_tenant(pg_settings)
            tenant_b, _ = new_tenant(pg_settings)
            with ctx.engine.begin() as conn:
                jobs = [_new_job(conn, tenant_a, image), _new_job(conn, tenant_b, image)]
            assert sorted(dispatch_round(ctx) or []) == sorted(str(j) for j in jobs)  # one fair round, both tenants
            assert [run_job(ctx, str(j)) for j in jobs] == ["succeeded", "succeeded"]
            assert _stored(pg_settings, tenant_a) > len(image)  # input + masks
            report = sweep_once(ctx)  # retention_days=0: the finished jobs are purged
            assert report.purged == 2
            assert (_stored(pg_settings, tenant_a), _stored(pg_settings, tenant_b)) == (0, 0)
        finally:
            ctx.client.close()
            ctx.engine.dispose()


async def test_a_full_store_answers_429_and_usage_and_the_audit_log_show_it(
    pg_settings: Settings, app_role: str
) -> None:
    from gateway.app import create_app

    image, _ = organ_image()
    settings = pg_settings.model_copy(update={"database_url": _url_as(pg_settings, app_role)})
    tenant_a, key_a = new_tenant(pg_settings)
    _, key_b = new_tenant(pg_settings)
    owner = make_sync_engine(pg_settings)
    with owner.begin() as conn:  # room for one image and a half
        conn.execute(update(Tenant).where(Tenant.id == tenant_a).values(max_stored_bytes=len(image) * 3 // 2))
    body = {"image_base64": base64.b64encode(image).decode(), "prompts": "liver"}
    a = {"Authorization": f"Bearer {key_a}"}
    async with TestClient(TestServer(create_app(settings))) as api:
        first = await api.post("/v1/jobs", json=body, headers=a)
        assert first.status == 202, await first.text()
        job_id = (await first.json())["id"]
        full = await api.post("/v1/jobs", json=body, headers=a)
        assert full.status == 429
        problem = await full.json()
        assert problem["code"] == "storage_quota_exceeded" and str(len(image) * 3 // 2) in problem["detail"]
        other = await api.post("/v1/jobs", json=body, headers={"Authorization": f"Bearer {key_b}"})
        assert other.status == 202  # another tenant's store is its own
        usage = await (await api.get("/v1/usage", headers=a)).json()
        assert (usage["stored_bytes"], usage["max_stored_bytes"]) == (len(image), len(image) * 3 // 2)
        deleted = await api.delete(f"/v1/jobs/{job_id}", headers={**a, "X-Request-Id": "req-delete-1"})
        assert deleted.status == 204 and deleted.headers["X-Request-Id"] == "req-delete-1"
        again = await api.post("/v1/jobs", json=body, headers=a)
        assert again.status == 202  # deleting freed the room at once
        secret = await api.get("/v1/webhooks/default/secret", headers=a)
        assert secret.status == 200
        refused = await api.delete(f"/v1/jobs/{uuid.uuid4()}", headers=a)
        assert refused.status == 404
    with owner.begin() as conn:
        rows = conn.execute(audit.select_entries(tenant_id=tenant_a)).mappings().all()
    owner.dispose()
    assert [(r["action"], r["actor"]) for r in rows] == [
        ("webhook.secret.read", "key"), ("job.delete", "key"), ("key.mint", "cli"), ("tenant.create", "cli"),
    ]
    deletion = rows[1]
    assert deletion["job_id"] == uuid.UUID(job_id) and deletion["request_id"] == "req-delete-1"
    assert deletion["key_id"] == key_a.split("_")[1]


async def test_the_operator_reads_one_tenants_audit_entries_and_a_tenant_cannot(
    pg_settings: Settings, app_role: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import hashlib

    from gateway.app import create_app
    from runtime.cli import build_parser, cmd_audit

    token = "op-" + uuid.uuid4().hex + uuid.uuid4().hex
    settings = pg_settings.model_copy(update={
        "database_url": _url_as(pg_settings, app_role),
        "operator_token_sha256": SecretStr(hashlib.sha256(token.encode()).hexdigest()),
    })
    tenant_a, key_a = new_tenant(pg_settings)
    tenant_b, key_b = new_tenant(pg_settings)
    operator = {"Authorization": f"Bearer {token}"}
    async with TestClient(TestServer(create_app(settings))) as api:
        for key in (key_a, key_b):
            read = await api.get("/v1/webhooks/default/secret", headers={"Authorization": f"Bearer {key}"})
            assert read.status == 200
        denied = await api.get(f"/v1/operator/audit?tenant_id={tenant_a}", headers={"Authorization": f"Bearer {key_a}"})
        assert denied.status == 403 and (await denied.json())["code"] == "operator_required"
        bad = await api.get("/v1/operator/audit", headers=operator)
        assert bad.status == 400
        entries = await api.get(f"/v1/operator/audit?tenant_id={tenant_a}&action=webhook.secret.read", headers=operator)
        assert entries.status == 200, await entries.text()
        data = (await entries.json())["data"]
        assert [(e["tenant_id"], e["action"], e["key_id"]) for e in data] == [
            (str(tenant_a), "webhook.secret.read", key_a.split("_")[1])
        ]
    # the operator's read is itself audited; the CLI reads every tenant
    args = build_parser().parse_args(["audit", "--since", "2000-01-01", "--limit", "50"])
    cmd_audit(pg_settings, args)
    out = capsys.readouterr().out
    assert out.count("webhook.secret.read") == 2 and "operator.operator_audit" in out
    assert str(tenant_b) in out and str(tenant_a) in out
