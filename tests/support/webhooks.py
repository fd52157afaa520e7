"""Helpers for webhook tests: jobs with webhooks, endpoints, and reading deliveries back."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select

from db import jobs as jobs_repo
from db import webhooks as repo
from db.models import WebhookAttempt, WebhookDelivery
from medparse.settings import Settings
from medparse.webhooks.signing import new_secret
from tests.support.factories import new_tenant, organ_image
from workers import lifecycle
from workers.pipeline import Segmentation, StoredMask


def insert_job(
    engine: Engine, settings: Settings, tenant_id: uuid.UUID | None = None, *,
    webhook_url: str | None = None, events: list[str] | None = None,
) -> tuple[uuid.UUID, uuid.UUID]:
    """A queued job (optionally with its own webhook_url); returns (tenant id, job id)."""
    if tenant_id is None:
        tenant_id, _ = new_tenant(settings)
    image, _ = organ_image()
    now = datetime.now(UTC)
    job = jobs_repo.NewJob(
        id=uuid.uuid4(), tenant_id=tenant_id, prompts=["liver", "tumor"], options={}, input_format="png",
        input_width=320, input_height=240, image=image, now=now,
    )
    with engine.begin() as conn:
        for stmt in jobs_repo.insert_job_statements(job):
            conn.execute(stmt)
        if webhook_url is not None:
            conn.execute(repo.insert_job_webhook_stmt(
                job.id, webhook_url, events or ["job.succeeded", "job.failed", "job.canceled"]
            ))
    return tenant_id, job.id


def add_endpoint(
    engine: Engine, tenant_id: uuid.UUID, url: str, event_types: list[str] | None = None, *, disabled: bool = False
) -> tuple[uuid.UUID, str]:
    endpoint_id, secret, now = uuid.uuid4(), new_secret(), datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(repo.insert_endpoint_stmt(
            id=endpoint_id, tenant_id=tenant_id, url=url, event_types=event_types, secret=secret,
            created_at=now, updated_at=now, disabled_at=now if disabled else None,
        ))
    return endpoint_id, secret


def tenant_secret(engine: Engine, tenant_id: uuid.UUID) -> str:
    with engine.begin() as conn:
        repo.ensure_tenant_secret_sync(conn, tenant_id, new_secret(), datetime.now(UTC))
        return str(conn.execute(repo.select_tenant_secret(tenant_id)).mappings().one()["secret"])


def fake_result(prompts: int = 2) -> Segmentation:
    masks = [
        StoredMask(index=i, prompt=f"p{i}", label=["liver", "tumor"][i % 2], area_px=100 + i, bbox=[1, 2, 30, 40],
                   height=240, width=320, data=b"\x00")
        for i in range(prompts)
    ]
    return Segmentation(width=320, height=240, masks=masks, provenance={
        "mask_encoding": "packbits-zlib1", "endpoint_http_attempts": 1, "endpoint_seconds": 0.1,
    })


def run_job_to(engine: Engine, job_id: uuid.UUID, outcome: str) -> None:
    """claim (job.started), then finish (job.succeeded) or fail (job.failed), as a worker would."""
    claimed = lifecycle.claim(engine, job_id, 60)
    assert claimed is not None
    if outcome == "succeeded":
        assert lifecycle.finish(engine, claimed, fake_result())
    elif outcome == "failed":
        assert lifecycle.fail(engine, claimed, "endpoint_timeout", "the endpoint did not answer")


def deliveries(engine: Engine, job_id: uuid.UUID) -> list[dict[str, Any]]:
    with engine.begin() as conn:
        rows = conn.execute(
            select(WebhookDelivery).where(WebhookDelivery.job_id == job_id).order_by(WebhookDelivery.created_at)
        ).mappings()
        return [dict(r) for r in rows]


def delivery(engine: Engine, delivery_id: uuid.UUID) -> dict[str, Any]:
    with engine.begin() as conn:
        return dict(conn.execute(select(WebhookDelivery).where(WebhookDelivery.id == delivery_id)).mappings().one())


def attempts(engine: Engine, delivery_id: uuid.UUID) -> list[dict[str, Any]]:
    with engine.begin() as conn:
        rows = conn.execute(
            select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery_id).order_by(WebhookAttempt.attempt)
        ).mappings()
        return [dict(r) for r in rows]
