"""A worker's steps for one webhook delivery: claim, send, record the attempt, schedule or end.

Like the job lifecycle: the claim is a compare-and-set that numbers the attempt, and the result
is written only by the claim that made that attempt, so a duplicate task is a no-op and a task
that outlived its lease cannot overwrite a newer attempt. No transaction is open while sending.

Between the claim and the send the delivery takes a slot of its tenant and of its target host
(medparse/webhooks/slots.py). Without one it is handed back (``postpone``): pending again, due in
``webhook_slot_wait_s``, no attempt counted, and the worker thread is free at once.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine

from db import webhooks as repo
from db.delivery_status import DeliveryStatus
from db.outbox import webhook_id
from medparse.settings import Settings
from medparse.webhooks.payload import render_body
from medparse.webhooks.schedule import retry_delay
from medparse.webhooks.sender import AttemptResult, Outcome, WebhookSender
from medparse.webhooks.signing import new_secret, webhook_headers
from medparse.webhooks.slots import DeliverySlots, HeldSlots, SlotRequest, host_of

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ClaimedDelivery:
    id: uuid.UUID
    attempt: int
    tenant_id: uuid.UUID
    job_id: uuid.UUID
    endpoint_id: uuid.UUID | None
    failures: int
    payload: dict[str, Any]
    #: where to send and with which secrets; None when the target is gone or disabled
    url: str | None
    signing_secrets: list[str]


def lease_seconds(settings: Settings) -> float:
    # the attempt's wall-clock deadline, plus a margin for DNS and the database
    return settings.webhook_attempt_deadline_s + 30.0


def _signing_secrets(secret: str, previous: str | None, previous_until: datetime | None, now: datetime) -> list[str]:
    if previous and previous_until is not None and previous_until > now:
        return [secret, previous]
    return [secret]


def _target(conn: Connection, tenant_id: uuid.UUID, job_id: uuid.UUID, endpoint_id: uuid.UUID | None,
            now: datetime) -> tuple[str | None, list[str]]:
    if endpoint_id is not None:
        ep = conn.execute(repo.select_endpoint_for_send(endpoint_id)).mappings().first()
        if ep is None or ep["disabled_at"] is not None:
            return None, []
        return ep["url"], _signing_secrets(ep["secret"], ep["previous_secret"], ep["previous_secret_expires_at"], now)
    hook = conn.execute(repo.select_job_webhook_for_send(job_id)).mappings().first()
    if hook is None or hook["disabled_at"] is not None:
        return None, []
    sec = conn.execute(repo.select_tenant_secret(tenant_id)).mappings().first()
    if sec is None:  # the submission stores the secret with the job's webhook; this is a fallback
        repo.ensure_tenant_secret_sync(conn, tenant_id, new_secret(), now)
        sec = conn.execute(repo.select_tenant_secret(tenant_id)).mappings().one()
    return hook["url"], _signing_secrets(sec["secret"], sec["previous_secret"], sec["previous_secret_expires_at"], now)


def claim(engine: Engine, delivery_id: uuid.UUID, settings: Settings) -> ClaimedDelivery | None:
    """A due delivery -> ``sending`` with its target and secrets; None when it is not due."""
    now = utcnow()
    with engine.begin() as conn:
        row = conn.execute(
            repo.claim_delivery_stmt(delivery_id, now=now, lease_until=now + timedelta(seconds=lease_seconds(settings)))
        ).mappings().first()
        if row is None:
            return None
        url, signing_secrets = _target(conn, row["tenant_id"], row["job_id"], row["endpoint_id"], now)
    return ClaimedDelivery(
        id=delivery_id, attempt=row["attempts"], tenant_id=row["tenant_id"], job_id=row["job_id"],
        endpoint_id=row["endpoint_id"], failures=row["failures"], payload=dict(row["payload"]),
        url=url, signing_secrets=signing_secrets,
    )


def _next_state(
    claimed: ClaimedDelivery, result: AttemptResult, settings: Settings, now: datetime
) -> tuple[DeliveryStatus, dict[str, Any]]:
    """The status the attempt's outcome moves the delivery to (a transition from ``sending``), and
    the columns written with it."""
    values: dict[str, Any] = {"updated_at": now, "last_status_code": result.status_code, "last_error": result.error}
    if result.outcome is Outcome.succeeded:
        return DeliveryStatus.succeeded, {**values, "next_attempt_at": None, "completed_at": now}
    if result.outcome is not Outcome.failed:  # gone (410) or refused: never retried
        return DeliveryStatus.failed, {**values, "next_attempt_at": None, "completed_at": now}
    failures = claimed.failures + 1
    delay = retry_delay(
        failures, settings.webhook_retry_schedule_s, jitter=settings.webhook_retry_jitter,
        retry_after_s=result.retry_after_s,
    )
    if delay is None:
        error = f"{result.error or 'failed'}; no retries left"[:200]
        return DeliveryStatus.failed, {**values, "failures": failures, "next_attempt_at": None,
                                       "completed_at": now, "last_error": error}
    return DeliveryStatus.pending, {**values, "failures": failures, "dispatched_at": None,
                                    "next_attempt_at": now + timedelta(seconds=delay)}


def _disable_if_failing_too_long(conn: Connection, endpoint_id: uuid.UUID, settings: Settings, now: datetime) -> None:
    """Svix's policy: an endpoint whose deliveries have all ended failed for
    ``webhook_disable_after_s`` is disabled (``failing``); re-enable it with PATCH, then replay."""
    since = conn.execute(repo.failing_since_stmt(endpoint_id)).scalar_one_or_none()
    if since is not None and since < now - timedelta(seconds=settings.webhook_disable_after_s):
        conn.execute(repo.disable_endpoint_stmt(endpoint_id, now=now, reason="failing"))
        log.warning("webhook endpoint %s disabled: every delivery failed since %s", endpoint_id, since.isoformat())


def finish(engine: Engine, claimed: ClaimedDelivery, result: AttemptResult, settings: Settings,
           started_at: datetime) -> bool:
    """Record the attempt and move the delivery on; False when a newer claim owns it."""
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(repo.insert_attempt_stmt(
            delivery_id=claimed.id, attempt=claimed.attempt, started_at=started_at, duration_ms=result.duration_ms,
            status_code=result.status_code, outcome=result.outcome.value, error=result.error,
        ))
        target, values = _next_state(claimed, result, settings, now)
        updated = conn.execute(repo.finish_attempt_stmt(claimed.id, claimed.attempt, target, **values)).rowcount == 1
        if updated and claimed.endpoint_id is not None and result.outcome is not Outcome.succeeded:
            _disable_if_failing_too_long(conn, claimed.endpoint_id, settings, now)
        if updated and result.outcome is Outcome.gone:
            # 410: the receiver asked us to stop. Disable the target and end what waits for it.
            if claimed.endpoint_id is not None:
                conn.execute(repo.disable_endpoint_stmt(claimed.endpoint_id, now=now, reason="gone"))
                conn.execute(repo.fail_pending_for_target_stmt(
                    endpoint_id=claimed.endpoint_id, now=now, error="the endpoint is disabled (HTTP 410)"))
            else:
                conn.execute(repo.disable_job_webhook_stmt(claimed.job_id, now=now))
                conn.execute(repo.fail_pending_for_target_stmt(
                    job_id=claimed.job_id, now=now, error="the job's webhook_url answered 410"))
    return updated


def postpone(engine: Engine, claimed: ClaimedDelivery, settings: Settings) -> bool:
    """Undo the claim: pending again, due after ``webhook_slot_wait_s``; False when a newer claim owns it."""
    now = utcnow()
    with engine.begin() as conn:
        return conn.execute(repo.postpone_claim_stmt(
            claimed.id, claimed.attempt, now=now, next_attempt_at=now + timedelta(seconds=settings.webhook_slot_wait_s)
        )).rowcount == 1


def _release_quietly(slots: DeliverySlots, held: HeldSlots) -> None:
    try:
        slots.release(held)
    except Exception as exc:  # Redis away: the slot's lease ends by itself; the attempt must still be recorded
        log.warning("could not release a webhook sending slot: %s", type(exc).__name__)


def deliver(
    engine: Engine, sender: WebhookSender, settings: Settings, delivery_id: uuid.UUID,
    slots: DeliverySlots | None = None,
) -> str:
    """One run of ``webhooks.deliver``. Returns what happened, for logs and tests.

    ``slots``: the per-tenant and per-host bounds; None sends without them (tests of other behaviour).
    """
    claimed = claim(engine, delivery_id, settings)
    if claimed is None:
        return "skipped"  # not due: delivered, waiting for its retry time, or being sent elsewhere
    held: HeldSlots | None = None
    if claimed.url is not None and slots is not None:
        held = slots.try_acquire(SlotRequest(str(claimed.tenant_id), host_of(claimed.url)))
        if held is None:
            postpone(engine, claimed, settings)
            log.debug("webhook %s postponed: its tenant or host has no free sending slot", webhook_id(claimed.id))
            return "postponed"
    try:
        started_at = utcnow()
        if claimed.url is None:
            result = AttemptResult(
                Outcome.refused, None, "target_disabled: the endpoint is disabled or deleted", None, 0
            )
        else:
            msg_id = webhook_id(claimed.id)
            body = render_body(claimed.payload, settings.webhook_link_base_url)
            headers = webhook_headers(claimed.signing_secrets, msg_id, int(started_at.timestamp()), body)
            result = sender.send(claimed.url, body, headers)
    finally:
        if held is not None and slots is not None:
            _release_quietly(slots, held)
    finish(engine, claimed, result, settings, started_at)
    # Ids and the error's kind only: no URL (its query may carry the receiver's token), body or secret.
    log.info(
        "webhook %s (%s) attempt %d to %s: %s %s",
        webhook_id(claimed.id), claimed.payload.get("type"), claimed.attempt,
        "endpoint " + str(claimed.endpoint_id) if claimed.endpoint_id else "job url",
        result.outcome.value, result.status_code or (result.error or "").split(":")[0],
    )
    return result.outcome.value
