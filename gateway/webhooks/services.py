"""Use cases of the webhook API. Each takes the dependencies (``Store``) and domain values, opens one
tenant-scoped transaction, and returns the resource or raises a domain error (gateway/errors.py);
another tenant's endpoint or delivery answers exactly like a missing one (``NotFound``)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from db import jobs as jobs_repo
from db import webhooks as repo
from db.delivery_status import DeliveryStatus
from db.outbox import webhook_id
from gateway.deps import Store
from gateway.errors import Conflict, InvalidField, JobNotFound, NotFound
from gateway.tenancy import tenant_transaction
from gateway.webhooks.rules import JobWebhookRequest, TargetPolicy, parse_events
from gateway.webhooks.schemas import (
    DeliveryPublic,
    SecretPublic,
    WebhookCreate,
    WebhookCreatedPublic,
    WebhookPublic,
    WebhookUpdate,
)
from medparse.webhooks.signing import new_secret


def utcnow() -> datetime:
    return datetime.now(UTC)


def webhook_url(endpoint_id: uuid.UUID) -> str:
    return f"/v1/webhooks/{endpoint_id}"


def to_webhook_public(row: Mapping[Any, Any]) -> WebhookPublic:
    base = webhook_url(row["id"])
    return WebhookPublic.model_validate({
        "id": row["id"], "url": row["url"], "description": row["description"], "event_types": row["event_types"],
        "enabled": row["disabled_at"] is None, "disabled_reason": row["disabled_reason"],
        "disabled_at": row["disabled_at"], "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "urls": {"get": base, "deliveries": f"{base}/deliveries", "secret": f"{base}/secret",
                 "rotate_secret": f"{base}/rotate-secret"},
    })


def to_delivery_public(row: Mapping[Any, Any], attempts: Sequence[Any]) -> DeliveryPublic:
    return DeliveryPublic.model_validate({
        "id": row["id"], "webhook_id": webhook_id(row["id"]), "job_id": row["job_id"],
        "endpoint_id": row["endpoint_id"], "target": "endpoint" if row["endpoint_id"] else "job_url",
        "event_type": row["event_type"], "status": row["status"], "attempt_count": row["attempts"],
        "next_attempt_at": row["next_attempt_at"], "last_status_code": row["last_status_code"],
        "last_error": row["last_error"], "created_at": row["created_at"],
        "updated_at": row["updated_at"], "completed_at": row["completed_at"],
        "attempts": [
            {"attempt": a.attempt, "started_at": a.started_at, "duration_ms": a.duration_ms,
             "status_code": a.status_code, "outcome": a.outcome, "error": a.error}
            for a in attempts
        ],
        "urls": {"get": f"/v1/deliveries/{row['id']}", "redeliver": f"/v1/deliveries/{row['id']}/redeliver",
                 "job": f"/v1/jobs/{row['job_id']}"},
    })


@dataclass(frozen=True, kw_only=True)
class DeliveryQuery:
    """Which of the tenant's deliveries to list: of one job, of one endpoint, or all."""

    job_id: uuid.UUID | None = None
    endpoint_id: uuid.UUID | None = None
    status: DeliveryStatus | None = None
    limit: int
    #: the (created_at, id) of the last delivery of the previous page
    after: tuple[datetime, uuid.UUID] | None = None


@dataclass(frozen=True)
class DeliveryPage:
    deliveries: list[DeliveryPublic]
    #: the (created_at, id) of this page's last delivery when another page follows
    next_after: tuple[datetime, uuid.UUID] | None


def _event_types(values: list[str] | None) -> list[str] | None:
    return None if values is None else parse_events(values, field="event_types")


# --- per-job webhook (called inside submit_job's transaction) -----------------------------------

async def attach_job_webhook(
    conn: AsyncConnection, tenant_id: uuid.UUID, job_id: uuid.UUID, webhook: JobWebhookRequest | None
) -> None:
    """Store the job's ``webhook_url``, and make sure the tenant has the secret that signs it."""
    if webhook is None:
        return
    await conn.execute(repo.insert_job_webhook_stmt(job_id, webhook.url, webhook.events))
    await repo.ensure_tenant_secret(conn, tenant_id, new_secret(), utcnow())


# --- endpoints -----------------------------------------------------------------------------------

async def create_endpoint(
    deps: Store, policy: TargetPolicy, tenant_id: uuid.UUID, body: WebhookCreate
) -> WebhookCreatedPublic:
    """A new endpoint with its own signing secret (shown once here, and at its ``secret`` URL).

    Raises:
        InvalidField: unknown event types; WebhookTargetRefused: a URL the SSRF ``policy`` refuses.
        Conflict: ``webhook_limit_reached``.
    """
    event_types = _event_types(body.event_types)
    url = await policy.check("url", body.url.strip())
    now, endpoint_id, secret = utcnow(), uuid.uuid4(), new_secret()
    limit = deps.settings.webhook_max_endpoints
    async with tenant_transaction(deps.engine, tenant_id) as conn:
        count = (await conn.execute(repo.count_endpoints(tenant_id))).scalar_one()
        if count >= limit:
            raise Conflict(f"at most {limit} webhooks", code="webhook_limit_reached")
        await conn.execute(repo.insert_endpoint_stmt(
            id=endpoint_id, tenant_id=tenant_id, url=url, description=body.description, event_types=event_types,
            secret=secret, created_at=now, updated_at=now,
        ))
        row = (await conn.execute(repo.select_endpoint(tenant_id, endpoint_id))).mappings().one()
    return WebhookCreatedPublic.model_validate({**to_webhook_public(row).model_dump(), "secret": secret})


async def list_endpoints(deps: Store, tenant_id: uuid.UUID) -> list[WebhookPublic]:
    async with tenant_transaction(deps.engine, tenant_id) as conn:
        rows = list((await conn.execute(repo.select_endpoints(tenant_id))).mappings())
    return [to_webhook_public(r) for r in rows]


async def _endpoint_row(conn: AsyncConnection, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> Mapping[Any, Any]:
    row = (await conn.execute(repo.select_endpoint(tenant_id, endpoint_id))).mappings().first()
    if row is None:
        raise NotFound("webhook")
    return row


async def get_endpoint(deps: Store, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> WebhookPublic:
    async with tenant_transaction(deps.engine, tenant_id) as conn:
        return to_webhook_public(await _endpoint_row(conn, tenant_id, endpoint_id))


async def update_endpoint(
    deps: Store, policy: TargetPolicy, tenant_id: uuid.UUID, endpoint_id: uuid.UUID, body: WebhookUpdate
) -> WebhookPublic:
    """Changes the fields given in ``body`` (``event_types: null`` = all); ``enabled`` re-enables or disables."""
    given = body.model_fields_set
    now = utcnow()
    values: dict[str, Any] = {"updated_at": now}
    if "url" in given:
        if body.url is None:
            raise InvalidField("url", "may not be null")
        values["url"] = await policy.check("url", body.url.strip())
    if "event_types" in given:
        values["event_types"] = _event_types(body.event_types)
    if "description" in given:
        values["description"] = body.description
    if "enabled" in given and body.enabled is not None:
        values.update(
            {"disabled_at": None, "disabled_reason": None} if body.enabled
            else {"disabled_at": now, "disabled_reason": "disabled_by_tenant"}
        )
    async with tenant_transaction(deps.engine, tenant_id) as conn:
        await _endpoint_row(conn, tenant_id, endpoint_id)
        await conn.execute(repo.update_endpoint_stmt(tenant_id, endpoint_id, **values))
        return to_webhook_public(await _endpoint_row(conn, tenant_id, endpoint_id))


async def delete_endpoint(deps: Store, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> None:
    """Deletes the endpoint with its deliveries and their attempts."""
    async with tenant_transaction(deps.engine, tenant_id) as conn:
        if (await conn.execute(repo.delete_endpoint_stmt(tenant_id, endpoint_id))).rowcount != 1:
            raise NotFound("webhook")


async def endpoint_secret(deps: Store, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> SecretPublic:
    async with tenant_transaction(deps.engine, tenant_id) as conn:
        await _endpoint_row(conn, tenant_id, endpoint_id)  # the tenant check
        row = (await conn.execute(repo.select_endpoint_for_send(endpoint_id))).mappings().one()
    return _secret_public(row)


def _secret_public(row: Mapping[Any, Any]) -> SecretPublic:
    until = row["previous_secret_expires_at"]
    live = row["previous_secret"] is not None and until is not None and until > utcnow()
    return SecretPublic(key=row["secret"], previous_key_expires_at=until if live else None)


async def rotate_endpoint_secret(deps: Store, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> SecretPublic:
    """A new secret; the old one also signs until ``webhook_secret_overlap_s`` from now."""
    now = utcnow()
    overlap_until = now + timedelta(seconds=deps.settings.webhook_secret_overlap_s)
    async with tenant_transaction(deps.engine, tenant_id) as conn:
        await _endpoint_row(conn, tenant_id, endpoint_id)
        await conn.execute(repo.rotate_endpoint_secret_stmt(
            tenant_id, endpoint_id, new_secret(), now=now, overlap_until=overlap_until
        ))
        row = (await conn.execute(repo.select_endpoint_for_send(endpoint_id))).mappings().one()
    return _secret_public(row)


# --- the tenant's default secret ---------------------------------------------------------------

async def default_secret(deps: Store, tenant_id: uuid.UUID) -> SecretPublic:
    """The secret that signs deliveries to the tenant's jobs' own ``webhook_url`` (made on first use)."""
    async with tenant_transaction(deps.engine, tenant_id) as conn:
        await repo.ensure_tenant_secret(conn, tenant_id, new_secret(), utcnow())
        row = (await conn.execute(repo.select_tenant_secret(tenant_id))).mappings().one()
    return _secret_public(row)


async def rotate_default_secret(deps: Store, tenant_id: uuid.UUID) -> SecretPublic:
    now = utcnow()
    overlap_until = now + timedelta(seconds=deps.settings.webhook_secret_overlap_s)
    async with tenant_transaction(deps.engine, tenant_id) as conn:
        await repo.ensure_tenant_secret(conn, tenant_id, new_secret(), now)
        await conn.execute(
            repo.rotate_tenant_secret_stmt(tenant_id, new_secret(), now=now, overlap_until=overlap_until)
        )
        row = (await conn.execute(repo.select_tenant_secret(tenant_id))).mappings().one()
    return _secret_public(row)


# --- deliveries ----------------------------------------------------------------------------------

async def _with_attempts(conn: AsyncConnection, rows: Sequence[Mapping[Any, Any]]) -> list[DeliveryPublic]:
    by_delivery: dict[uuid.UUID, list[Any]] = {r["id"]: [] for r in rows}
    if rows:
        for attempt in await conn.execute(repo.select_attempts(list(by_delivery))):
            by_delivery[attempt.delivery_id].append(attempt)
    return [to_delivery_public(r, by_delivery[r["id"]]) for r in rows]


async def list_deliveries(deps: Store, tenant_id: uuid.UUID, query: DeliveryQuery) -> DeliveryPage:
    """The tenant's deliveries (of one job, of one endpoint, or all), newest first, with attempts.

    Raises:
        JobNotFound, NotFound: the job or endpoint asked for is not the tenant's.
    """
    async with tenant_transaction(deps.engine, tenant_id) as conn:
        if query.job_id is not None and await jobs_repo.read_job(conn, tenant_id, query.job_id) is None:
            raise JobNotFound()
        if query.endpoint_id is not None:
            await _endpoint_row(conn, tenant_id, query.endpoint_id)
        stmt = repo.list_deliveries_stmt(
            tenant_id, job_id=query.job_id, endpoint_id=query.endpoint_id, status=query.status, after=query.after,
            limit=query.limit + 1,
        )
        rows = list((await conn.execute(stmt)).mappings())
        deliveries = await _with_attempts(conn, rows[:query.limit])
    last = deliveries[-1] if len(rows) > query.limit and deliveries else None
    return DeliveryPage(deliveries, (last.created_at, last.id) if last is not None else None)


async def _delivery(conn: AsyncConnection, tenant_id: uuid.UUID, delivery_id: uuid.UUID) -> DeliveryPublic:
    row = (await conn.execute(repo.select_delivery(tenant_id, delivery_id))).mappings().first()
    if row is None:
        raise NotFound("delivery")
    return (await _with_attempts(conn, [row]))[0]


async def get_delivery(deps: Store, tenant_id: uuid.UUID, delivery_id: uuid.UUID) -> DeliveryPublic:
    async with tenant_transaction(deps.engine, tenant_id) as conn:
        return await _delivery(conn, tenant_id, delivery_id)


async def redeliver(deps: Store, tenant_id: uuid.UUID, delivery_id: uuid.UUID) -> DeliveryPublic:
    """Send the delivery again now (same ``webhook-id``, fresh retry schedule); the dispatcher picks
    it up within ``webhook_dispatch_interval_s``.

    Raises:
        NotFound: no such delivery. Conflict: its endpoint is disabled, or it is being sent right now.
    """
    async with tenant_transaction(deps.engine, tenant_id) as conn:
        current = await _delivery(conn, tenant_id, delivery_id)
        if current.endpoint_id is not None:
            endpoint = await _endpoint_row(conn, tenant_id, current.endpoint_id)
            if endpoint["disabled_at"] is not None:
                raise Conflict("the webhook is disabled; enable it (PATCH) first", code="webhook_disabled")
        else:
            # An explicit replay to the job's own URL re-arms it even after a 410.
            await conn.execute(repo.enable_job_webhook_stmt(current.job_id))
        if (await conn.execute(repo.redeliver_stmt(tenant_id, delivery_id, now=utcnow()))).rowcount != 1:
            raise Conflict("the delivery is being sent right now; retry shortly", code="delivery_in_progress")
        return await _delivery(conn, tenant_id, delivery_id)
