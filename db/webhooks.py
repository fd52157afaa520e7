"""Webhook repository: statements over ``webhook_endpoints``, ``webhook_tenant_secrets``,
``job_webhooks``, ``webhook_deliveries`` and ``webhook_attempts``.

Like ``db.jobs``, nothing here commits: callers run the statements in their own transaction.
Every statement reached from the API takes a ``tenant_id``; the worker-side ones act on ids the
system handed out. Delivery state changes are the transitions of ``db.delivery_status``, written as
compare-and-set UPDATEs on ``status`` (and ``attempts`` for the claim's owner). The dialect (Postgres or
the embedded mode's SQLite) is decided here, from the connection, never by the callers.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Insert,
    Select,
    Update,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from db.delivery_status import CLAIMABLE, REPLAYABLE, DeliveryStatus, check_transition
from db.models import (
    Job,
    JobWebhook,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookTenantSecret,
)

#: ``target`` of a delivery to the job's own ``webhook_url`` (else the endpoint id).
JOB_TARGET = "job"

ENDPOINT_COLUMNS = [
    WebhookEndpoint.id, WebhookEndpoint.url, WebhookEndpoint.description, WebhookEndpoint.event_types,
    WebhookEndpoint.disabled_at, WebhookEndpoint.disabled_reason, WebhookEndpoint.created_at,
    WebhookEndpoint.updated_at,
]
DELIVERY_COLUMNS = [c for c in WebhookDelivery.__table__.c if c.name != "payload"]


def _insert_ignoring_duplicates(table: Any, dialect: str) -> Insert:
    """``INSERT ... ON CONFLICT DO NOTHING`` for the two dialects we run on."""
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


# --- endpoints -------------------------------------------------------------------------------

def insert_endpoint_stmt(**values: Any) -> Insert:
    return insert(WebhookEndpoint).values(**values)


def select_endpoints(tenant_id: uuid.UUID) -> Select[Any]:
    return (
        select(*ENDPOINT_COLUMNS)
        .where(WebhookEndpoint.tenant_id == tenant_id)
        .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
    )


def count_endpoints(tenant_id: uuid.UUID) -> Select[Any]:
    return select(func.count()).select_from(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)


def select_endpoint(tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> Select[Any]:
    return select(*ENDPOINT_COLUMNS).where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.tenant_id == tenant_id)


def update_endpoint_stmt(tenant_id: uuid.UUID, endpoint_id: uuid.UUID, **values: Any) -> Update:
    return (
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.tenant_id == tenant_id)
        .values(**values)
    )


def delete_endpoint_stmt(tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> Any:
    return delete(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.tenant_id == tenant_id)


def rotate_endpoint_secret_stmt(
    tenant_id: uuid.UUID, endpoint_id: uuid.UUID, new_secret: str, *, now: datetime, overlap_until: datetime
) -> Update:
    # SET evaluates every right-hand side against the old row, so previous_secret gets the old secret.
    return update_endpoint_stmt(
        tenant_id, endpoint_id, previous_secret=WebhookEndpoint.secret, secret=new_secret,
        previous_secret_expires_at=overlap_until, updated_at=now,
    )


def enabled_endpoints_for_tenant(tenant_id: uuid.UUID) -> Select[Any]:
    return select(WebhookEndpoint.id, WebhookEndpoint.event_types).where(
        WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.disabled_at.is_(None)
    )


def select_endpoint_for_send(endpoint_id: uuid.UUID) -> Select[Any]:
    return select(
        WebhookEndpoint.url, WebhookEndpoint.secret, WebhookEndpoint.previous_secret,
        WebhookEndpoint.previous_secret_expires_at, WebhookEndpoint.disabled_at,
    ).where(WebhookEndpoint.id == endpoint_id)


def failing_since_stmt(endpoint_id: uuid.UUID) -> Select[Any]:
    """When the endpoint's current run of failures began: the oldest delivery that ended ``failed``
    after its last success (NULL when the last delivery that ended succeeded)."""
    last_success = (
        select(func.max(WebhookDelivery.completed_at))
        .where(WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.status == DeliveryStatus.succeeded.value)
        .scalar_subquery()
    )
    return select(func.min(WebhookDelivery.created_at)).where(
        WebhookDelivery.endpoint_id == endpoint_id,
        WebhookDelivery.status == DeliveryStatus.failed.value,
        or_(last_success.is_(None), WebhookDelivery.created_at > last_success),
    )


def disable_endpoint_stmt(endpoint_id: uuid.UUID, *, now: datetime, reason: str) -> Update:
    return (
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.disabled_at.is_(None))
        .values(disabled_at=now, disabled_reason=reason, updated_at=now)
    )


# --- the tenant's default secret ---------------------------------------------------------------

def _ensure_tenant_secret_stmt(dialect: str, tenant_id: uuid.UUID, secret: str, now: datetime) -> Insert:
    return _insert_ignoring_duplicates(WebhookTenantSecret, dialect).values(
        tenant_id=tenant_id, secret=secret, created_at=now, updated_at=now
    )


async def ensure_tenant_secret(conn: AsyncConnection, tenant_id: uuid.UUID, secret: str, now: datetime) -> None:
    """Creates the tenant's default secret (``secret``) on first use; a concurrent first use keeps the other's."""
    await conn.execute(_ensure_tenant_secret_stmt(conn.dialect.name, tenant_id, secret, now))


def ensure_tenant_secret_sync(conn: Connection, tenant_id: uuid.UUID, secret: str, now: datetime) -> None:
    """``ensure_tenant_secret`` on a worker's (sync) connection."""
    conn.execute(_ensure_tenant_secret_stmt(conn.dialect.name, tenant_id, secret, now))


def select_tenant_secret(tenant_id: uuid.UUID) -> Select[Any]:
    return select(
        WebhookTenantSecret.secret, WebhookTenantSecret.previous_secret, WebhookTenantSecret.previous_secret_expires_at
    ).where(WebhookTenantSecret.tenant_id == tenant_id)


def rotate_tenant_secret_stmt(
    tenant_id: uuid.UUID, new_secret: str, *, now: datetime, overlap_until: datetime
) -> Update:
    return (
        update(WebhookTenantSecret)
        .where(WebhookTenantSecret.tenant_id == tenant_id)
        .values(
            previous_secret=WebhookTenantSecret.secret, secret=new_secret,
            previous_secret_expires_at=overlap_until, updated_at=now,
        )
    )


# --- per-job webhook URL -----------------------------------------------------------------------

def insert_job_webhook_stmt(job_id: uuid.UUID, url: str, event_types: list[str]) -> Insert:
    return insert(JobWebhook).values(job_id=job_id, url=url, event_types=event_types)


def _tenant_has_endpoints() -> Any:
    return (
        select(WebhookEndpoint.id)
        .where(WebhookEndpoint.tenant_id == Job.tenant_id, WebhookEndpoint.disabled_at.is_(None))
        .exists()
    )


def _own_webhook(column: Any) -> Any:
    return select(column).where(JobWebhook.job_id == Job.id).scalar_subquery()


#: What the outbox needs besides the job row: the job's own webhook and whether its tenant has an
#: enabled endpoint. A status change RETURNING them with the job row (``OUTBOX_COLUMNS``) hands the
#: outbox everything: it reads nothing, and when nobody listens it does no I/O at all.
OUTBOX_COLUMNS = [
    _own_webhook(JobWebhook.url).label("webhook_url"),
    _own_webhook(JobWebhook.event_types).label("webhook_events"),
    _own_webhook(JobWebhook.disabled_at).label("webhook_disabled_at"),
    _tenant_has_endpoints().label("tenant_has_endpoints"),
]
#: The same for a job the caller has not just changed (parameter ``job_id``).
SELECT_JOB_WITH_WEBHOOK = select(*Job.__table__.c, *OUTBOX_COLUMNS).where(
    Job.id == bindparam("job_id", type_=Job.id.type)
)


def select_job_webhook_for_send(job_id: uuid.UUID) -> Select[Any]:
    return select(JobWebhook.url, JobWebhook.disabled_at).where(JobWebhook.job_id == job_id)


def enable_job_webhook_stmt(job_id: uuid.UUID) -> Update:
    return update(JobWebhook).where(JobWebhook.job_id == job_id).values(disabled_at=None)


def disable_job_webhook_stmt(job_id: uuid.UUID, *, now: datetime) -> Update:
    return update(JobWebhook).where(JobWebhook.job_id == job_id, JobWebhook.disabled_at.is_(None)).values(
        disabled_at=now
    )


# --- deliveries ----------------------------------------------------------------------------------

def insert_deliveries(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """The outbox rows of one job event; the (job_id, event_type, target) constraint makes a
    repeated event (a second claim after a lost lease) a no-op instead of a second delivery."""
    conn.execute(_insert_ignoring_duplicates(WebhookDelivery, conn.dialect.name).values(rows))


#: When each claimable status is due, i.e. may be claimed at ``now``.
_DUE_WHEN: dict[DeliveryStatus, Callable[[datetime], ColumnElement[bool]]] = {
    DeliveryStatus.pending: lambda now: WebhookDelivery.next_attempt_at <= now,
    # The task that was sending died (kill -9, lost worker): its lease ran out.
    DeliveryStatus.sending: lambda now: WebhookDelivery.claimed_until < now,
}
assert set(_DUE_WHEN) == CLAIMABLE, "every status a claim may start from needs its due condition"


def _due(now: datetime) -> Any:
    return or_(*(and_(WebhookDelivery.status == status.value, due(now)) for status, due in _DUE_WHEN.items()))


def _not_recently_dispatched(dispatched_before: datetime) -> Any:
    return or_(WebhookDelivery.dispatched_at.is_(None), WebhookDelivery.dispatched_at < dispatched_before)


def due_deliveries_stmt(*, now: datetime, dispatched_before: datetime, limit: int, per_tenant: int) -> Select[Any]:
    """Due deliveries, oldest first, at most ``per_tenant`` of each tenant: a tenant with a backlog
    for a slow receiver cannot fill the queue with deliveries that would only be postponed (each
    tenant has only a few sending slots), nor push other tenants' deliveries back."""
    ranked = (
        select(
            WebhookDelivery.id,
            WebhookDelivery.next_attempt_at,
            func.row_number()
            .over(partition_by=WebhookDelivery.tenant_id, order_by=WebhookDelivery.next_attempt_at)
            .label("rank"),
        )
        .where(_due(now), _not_recently_dispatched(dispatched_before))
        .subquery()
    )
    return (
        select(ranked.c.id)
        .where(ranked.c.rank <= per_tenant)
        .order_by(ranked.c.next_attempt_at)
        .limit(limit)
    )


def mark_dispatched_stmt(delivery_ids: list[uuid.UUID], *, now: datetime, dispatched_before: datetime) -> Update:
    """Compare-and-set, so two workers' dispatchers do not both publish the same delivery;
    RETURNING the ids this dispatcher took (one statement for the whole batch)."""
    return (
        update(WebhookDelivery)
        .where(WebhookDelivery.id.in_(delivery_ids), _due(now), _not_recently_dispatched(dispatched_before))
        .values(dispatched_at=now)
        .returning(WebhookDelivery.id)
    )


def unmark_dispatched_stmt(delivery_ids: list[uuid.UUID], *, now: datetime) -> Update:
    """Hand deliveries whose publish failed back to the next dispatcher pass."""
    return (
        update(WebhookDelivery)
        .where(WebhookDelivery.id.in_(delivery_ids), WebhookDelivery.dispatched_at == now)
        .values(dispatched_at=None)
    )


def claim_delivery_stmt(delivery_id: uuid.UUID, *, now: datetime, lease_until: datetime) -> Update:
    """due -> sending, numbering the attempt; RETURNING the attempt number (the claim token)."""
    for status in CLAIMABLE:
        check_transition(status, DeliveryStatus.sending)
    return (
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, _due(now))
        .values(
            status=DeliveryStatus.sending.value, attempts=WebhookDelivery.attempts + 1, claimed_until=lease_until,
            updated_at=now,
        )
        .returning(
            WebhookDelivery.attempts, WebhookDelivery.tenant_id, WebhookDelivery.job_id,
            WebhookDelivery.endpoint_id, WebhookDelivery.failures, WebhookDelivery.payload,
        )
    )


def _update_own_claim(delivery_id: uuid.UUID, attempt: int) -> Update:
    """An UPDATE of a delivery still being sent under the claim that made ``attempt`` (compare-and-set)."""
    return update(WebhookDelivery).where(
        WebhookDelivery.id == delivery_id,
        WebhookDelivery.status == DeliveryStatus.sending.value,
        WebhookDelivery.attempts == attempt,
    )


def finish_attempt_stmt(delivery_id: uuid.UUID, attempt: int, target: DeliveryStatus, **values: Any) -> Update:
    """sending -> ``target`` (pending for a retry, succeeded or failed), only for the claim that made ``attempt``."""
    check_transition(DeliveryStatus.sending, target)
    return (
        _update_own_claim(delivery_id, attempt)
        .values(status=target.value, claimed_until=None, **values)
    )


def postpone_claim_stmt(delivery_id: uuid.UUID, attempt: int, *, now: datetime, next_attempt_at: datetime) -> Update:
    """sending -> pending without an attempt (no free per-tenant/per-host slot): the claim is undone,
    attempt number included, so it costs the delivery neither an attempt nor a retry step."""
    check_transition(DeliveryStatus.sending, DeliveryStatus.pending)
    return (
        _update_own_claim(delivery_id, attempt)
        .values(
            status=DeliveryStatus.pending.value, attempts=WebhookDelivery.attempts - 1, claimed_until=None,
            dispatched_at=None, next_attempt_at=next_attempt_at, updated_at=now,
        )
    )


def insert_attempt_stmt(**values: Any) -> Insert:
    return insert(WebhookAttempt).values(**values)


def list_deliveries_stmt(
    tenant_id: uuid.UUID,
    *,
    job_id: uuid.UUID | None = None,
    endpoint_id: uuid.UUID | None = None,
    status: DeliveryStatus | None = None,
    after: tuple[datetime, uuid.UUID] | None = None,
    limit: int,
) -> Select[Any]:
    """Newest first; ``after`` is the (created_at, id) of the last row of the previous page."""
    stmt = select(*DELIVERY_COLUMNS).where(WebhookDelivery.tenant_id == tenant_id)
    if job_id is not None:
        stmt = stmt.where(WebhookDelivery.job_id == job_id)
    if endpoint_id is not None:
        stmt = stmt.where(WebhookDelivery.endpoint_id == endpoint_id)
    if status is not None:
        stmt = stmt.where(WebhookDelivery.status == status.value)
    if after is not None:
        created_at, delivery_id = after
        stmt = stmt.where(
            or_(
                WebhookDelivery.created_at < created_at,
                and_(WebhookDelivery.created_at == created_at, WebhookDelivery.id < delivery_id),
            )
        )
    return stmt.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc()).limit(limit)


def select_delivery(tenant_id: uuid.UUID, delivery_id: uuid.UUID) -> Select[Any]:
    return select(*DELIVERY_COLUMNS).where(WebhookDelivery.id == delivery_id, WebhookDelivery.tenant_id == tenant_id)


def select_attempts(delivery_ids: list[uuid.UUID]) -> Select[Any]:
    return (
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id.in_(delivery_ids))
        .order_by(WebhookAttempt.delivery_id, WebhookAttempt.attempt)
    )


def redeliver_stmt(tenant_id: uuid.UUID, delivery_id: uuid.UUID, *, now: datetime) -> Update:
    """Any delivery not being sent right now goes back to ``pending``, due now, with a fresh
    retry schedule. The ``webhook-id`` stays the same: receivers dedupe on it."""
    for status in REPLAYABLE:
        check_transition(status, DeliveryStatus.pending)
    return (
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.tenant_id == tenant_id,
            WebhookDelivery.status.in_([s.value for s in sorted(REPLAYABLE)]),
        )
        .values(
            status=DeliveryStatus.pending.value, failures=0, next_attempt_at=now, dispatched_at=None,
            claimed_until=None, completed_at=None, updated_at=now,
        )
    )


def fail_pending_for_target_stmt(
    *, job_id: uuid.UUID | None = None, endpoint_id: uuid.UUID | None = None, now: datetime, error: str
) -> Update:
    """After a 410: the target's other waiting deliveries end ``failed`` without being sent."""
    check_transition(DeliveryStatus.pending, DeliveryStatus.failed)
    stmt = update(WebhookDelivery).where(WebhookDelivery.status == DeliveryStatus.pending.value)
    if endpoint_id is not None:
        stmt = stmt.where(WebhookDelivery.endpoint_id == endpoint_id)
    else:
        stmt = stmt.where(WebhookDelivery.job_id == job_id, WebhookDelivery.target == JOB_TARGET)
    return stmt.values(
        status=DeliveryStatus.failed.value, next_attempt_at=None, completed_at=now, updated_at=now,
        last_error=error[:200],
    )
