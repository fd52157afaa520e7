"""Webhook outbox and delivery against real Postgres and a real receiver on 127.0.0.1.

The task body (``deliver``) and the dispatcher pass (``publish_due``) run in the test process so
every branch is observable; Celery itself carries them in the e2e test.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import update
from standardwebhooks.webhooks import Webhook

from db import webhooks as repo
from db.delivery_status import DeliveryStatus
from db.models import WebhookDelivery
from db.outbox import record_job_event, record_transition, webhook_id
from medparse.settings import Settings
from medparse.webhooks.sender import WebhookSender
from tests.support.tls import make_tls_contexts
from tests.support.webhook_receiver import Receiver, running_receiver
from tests.support.webhooks import (
    add_endpoint,
    attempts,
    deliveries,
    delivery,
    insert_job,
    run_job_to,
    tenant_secret,
)
from workers.celery_app import make_celery
from workers.context import ContextHolder, WorkerContext
from workers.webhook_delivery import claim, deliver
from workers.webhook_tasks import WEBHOOK_QUEUE, WEBHOOK_TASK, publish_due


@pytest.fixture
def ctx(pg_settings: Settings) -> Iterator[WorkerContext]:
    settings = pg_settings.model_copy(update={
        "endpoint_scoring_uri": "http://127.0.0.1:9/score", "endpoint_key": SecretStr("unused"),
        "webhook_allow_private_targets": True, "webhook_retry_schedule_s": (0.3, 0.3),
        "webhook_retry_jitter": 0.0, "webhook_timeout_s": 1.0,
    })
    context = ContextHolder(settings, make_celery(settings, sweeper=False)).get()
    yield context
    context.client.close()
    context.engine.dispose()


@pytest.fixture
def sender(ctx: WorkerContext) -> Iterator[WebhookSender]:
    s = WebhookSender(timeout_s=ctx.settings.webhook_timeout_s, allow_private=True)
    yield s
    s.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


def settle(ctx: WorkerContext, sender: WebhookSender, delivery_id: uuid.UUID, timeout: float = 10) -> dict[str, Any]:
    """Run the task whenever the delivery is due, until it is succeeded or failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        deliver(ctx.engine, sender, ctx.settings, delivery_id)
        row = delivery(ctx.engine, delivery_id)
        if row["status"] in ("succeeded", "failed"):
            return row
        time.sleep(0.05)
    raise AssertionError(f"delivery {delivery_id} still {delivery(ctx.engine, delivery_id)['status']}")


def only(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, rows)
    return found[0]


def test_events_are_written_with_the_status_change_once_per_subscribed_target(
    ctx: WorkerContext, receiver: Receiver
) -> None:
    tenant_id, job_id = insert_job(ctx.engine, ctx.settings, webhook_url=receiver.url("/ok"))
    every, _ = add_endpoint(ctx.engine, tenant_id, receiver.url("/ok"))
    failures_only, _ = add_endpoint(ctx.engine, tenant_id, receiver.url("/ok"), ["job.failed"])
    add_endpoint(ctx.engine, tenant_id, receiver.url("/ok"), disabled=True)
    _, other_tenants_job = insert_job(ctx.engine, ctx.settings)

    run_job_to(ctx.engine, job_id, "succeeded")
    rows = deliveries(ctx.engine, job_id)
    # job.started: only the endpoint with every event (the job URL defaults to terminal events)
    assert {(r["target"], r["event_type"]) for r in rows} == {
        (str(every), "job.started"), (str(every), "job.succeeded"), ("job", "job.succeeded")
    }
    assert all(r["status"] == "pending" and r["tenant_id"] == tenant_id for r in rows)
    succeeded = only(rows, target="job")["payload"]
    assert succeeded["type"] == "job.succeeded" and succeeded["data"]["labels"] == ["liver", "tumor"]
    assert [m["area_px"] for m in succeeded["data"]["masks"]] == [100, 101]
    assert str(failures_only) not in {r["target"] for r in rows}

    # A repeated status event (e.g. a retried transaction) never creates a second delivery.
    with ctx.engine.begin() as conn:
        assert record_transition(conn, job_id, "succeeded") == 2
    assert len(deliveries(ctx.engine, job_id)) == 3
    # A rolled-back status change leaves no event behind.
    with pytest.raises(RuntimeError), ctx.engine.begin() as conn:
        record_job_event(conn, job_id, "job.canceled")
        raise RuntimeError("the status change failed")
    assert len(deliveries(ctx.engine, job_id)) == 3
    assert deliveries(ctx.engine, other_tenants_job) == []


def test_a_delivery_is_signed_for_the_tenant_default_secret_and_recorded(
    ctx: WorkerContext, sender: WebhookSender, receiver: Receiver
) -> None:
    tenant_id, job_id = insert_job(ctx.engine, ctx.settings, webhook_url=receiver.url("/ok?token=abc"))
    run_job_to(ctx.engine, job_id, "succeeded")
    (row,) = deliveries(ctx.engine, job_id)
    assert deliver(ctx.engine, sender, ctx.settings, row["id"]) == "succeeded"

    (got,) = receiver.requests("/ok")
    payload = Webhook(tenant_secret(ctx.engine, tenant_id)).verify(got.body, got.headers)
    assert payload["type"] == "job.succeeded" and payload["data"]["id"] == str(job_id)
    assert payload["data"]["status"] == "succeeded" and payload["data"]["urls"]["get"] == f"/v1/jobs/{job_id}"
    assert got.headers["webhook-id"] == webhook_id(row["id"]) and got.headers["content-type"] == "application/json"
    assert got.headers["host"] == receiver.base_url.removeprefix("http://")
    assert len(got.body) < 20_000
    done = delivery(ctx.engine, row["id"])
    assert done["status"] == "succeeded" and done["completed_at"] and done["last_status_code"] == 200
    (attempt,) = attempts(ctx.engine, row["id"])
    assert (attempt["attempt"], attempt["outcome"], attempt["status_code"]) == (1, "succeeded", 200)
    # Delivered: a duplicate task (or a late redelivered message) does nothing.
    assert deliver(ctx.engine, sender, ctx.settings, row["id"]) == "skipped"
    assert len(receiver.requests("/ok")) == 1


def test_a_500_is_retried_after_the_schedule_with_the_same_webhook_id(
    ctx: WorkerContext, sender: WebhookSender, receiver: Receiver
) -> None:
    tenant_id, job_id = insert_job(ctx.engine, ctx.settings)
    _, secret = add_endpoint(ctx.engine, tenant_id, receiver.url("/flaky/1"), ["job.failed"])
    run_job_to(ctx.engine, job_id, "failed")
    (row,) = deliveries(ctx.engine, job_id)

    assert deliver(ctx.engine, sender, ctx.settings, row["id"]) == "failed"
    waiting = delivery(ctx.engine, row["id"])
    assert waiting["status"] == "pending" and waiting["failures"] == 1 and waiting["last_status_code"] == 500
    assert waiting["next_attempt_at"] > datetime.now(UTC) + timedelta(seconds=0.1)
    assert deliver(ctx.engine, sender, ctx.settings, row["id"]) == "skipped"  # not due yet
    assert settle(ctx, sender, row["id"])["status"] == "succeeded"

    first, second = receiver.requests("/flaky/1")
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == webhook_id(row["id"])
    assert first.body == second.body
    assert Webhook(secret).verify(second.body, second.headers)["type"] == "job.failed"
    assert [(a["outcome"], a["status_code"]) for a in attempts(ctx.engine, row["id"])] == [
        ("failed", 500), ("succeeded", 200)
    ]


def test_a_delivery_that_keeps_failing_ends_failed_and_is_listed(
    ctx: WorkerContext, sender: WebhookSender, receiver: Receiver
) -> None:
    tenant_id, job_id = insert_job(ctx.engine, ctx.settings, webhook_url=receiver.url("/status/503"))
    run_job_to(ctx.engine, job_id, "failed")
    (row,) = deliveries(ctx.engine, job_id)
    done = settle(ctx, sender, row["id"])
    assert done["status"] == "failed" and "no retries left" in done["last_error"]
    assert len(receiver.requests("/status/503")) == 3  # the first attempt and one per schedule step
    with ctx.engine.begin() as conn:
        listing = repo.list_deliveries_stmt(tenant_id, status=DeliveryStatus.failed, limit=10)
        failed = list(conn.execute(listing).mappings())
    assert [r["id"] for r in failed] == [row["id"]]


def test_410_disables_the_endpoint_ends_its_waiting_deliveries_and_stops_new_ones(
    ctx: WorkerContext, sender: WebhookSender, receiver: Receiver
) -> None:
    tenant_id, job_id = insert_job(ctx.engine, ctx.settings, webhook_url=receiver.url("/gone"))
    endpoint_id, _ = add_endpoint(ctx.engine, tenant_id, receiver.url("/gone"))
    run_job_to(ctx.engine, job_id, "succeeded")
    started = only(deliveries(ctx.engine, job_id), target=str(endpoint_id), event_type="job.started")
    assert deliver(ctx.engine, sender, ctx.settings, started["id"]) == "gone"

    with ctx.engine.begin() as conn:
        endpoint = conn.execute(repo.select_endpoint(tenant_id, endpoint_id)).mappings().one()
    assert endpoint["disabled_at"] is not None and endpoint["disabled_reason"] == "gone"
    rows = deliveries(ctx.engine, job_id)
    assert only(rows, target=str(endpoint_id), event_type="job.succeeded")["status"] == "failed"
    # The job's own URL also answers 410: its webhook is disabled too.
    job_url = only(rows, target="job")
    assert deliver(ctx.engine, sender, ctx.settings, job_url["id"]) == "gone"
    assert len(receiver.requests("/gone")) == 2
    # A webhook never decides the job's fate.
    with ctx.engine.begin() as conn:
        assert conn.execute(repo.SELECT_JOB_WITH_WEBHOOK, {"job_id": job_id}).mappings().one()["status"] == "succeeded"
    _, next_job = insert_job(ctx.engine, ctx.settings, tenant_id)
    run_job_to(ctx.engine, next_job, "succeeded")
    assert deliveries(ctx.engine, next_job) == []


def test_a_redirect_is_a_failed_attempt_and_is_not_followed(
    ctx: WorkerContext, sender: WebhookSender, receiver: Receiver
) -> None:
    _, job_id = insert_job(ctx.engine, ctx.settings, webhook_url=receiver.url("/redirect"))
    run_job_to(ctx.engine, job_id, "succeeded")
    (row,) = deliveries(ctx.engine, job_id)
    assert deliver(ctx.engine, sender, ctx.settings, row["id"]) == "failed"
    (attempt,) = attempts(ctx.engine, row["id"])
    assert attempt["status_code"] == 302 and "redirects are not followed" in attempt["error"]
    assert delivery(ctx.engine, row["id"])["status"] == "pending"
    assert receiver.requests("/ok") == []


def test_a_receiver_that_does_not_answer_within_the_timeout_is_a_failed_attempt(
    ctx: WorkerContext, receiver: Receiver
) -> None:
    _, job_id = insert_job(ctx.engine, ctx.settings, webhook_url=receiver.url("/slow/5"))
    run_job_to(ctx.engine, job_id, "succeeded")
    (row,) = deliveries(ctx.engine, job_id)
    quick = WebhookSender(timeout_s=0.5, allow_private=True)
    started = time.monotonic()
    assert deliver(ctx.engine, quick, ctx.settings, row["id"]) == "failed"
    quick.close()
    assert time.monotonic() - started < 3
    (attempt,) = attempts(ctx.engine, row["id"])
    assert attempt["status_code"] is None and attempt["error"].startswith("timeout")


def test_429_retry_after_lengthens_the_wait(ctx: WorkerContext, sender: WebhookSender, receiver: Receiver) -> None:
    settings = ctx.settings.model_copy(update={"webhook_retry_schedule_s": (0.3, 30.0)})
    _, job_id = insert_job(ctx.engine, ctx.settings, webhook_url=receiver.url("/throttle"))
    run_job_to(ctx.engine, job_id, "succeeded")
    (row,) = deliveries(ctx.engine, job_id)
    before = datetime.now(UTC)
    assert deliver(ctx.engine, sender, settings, row["id"]) == "failed"
    wait = (delivery(ctx.engine, row["id"])["next_attempt_at"] - before).total_seconds()
    assert 0.9 <= wait <= 2.0  # Retry-After: 1 beats the 0.3 s step


def test_concurrent_duplicate_tasks_send_once(ctx: WorkerContext, sender: WebhookSender, receiver: Receiver) -> None:
    _, job_id = insert_job(ctx.engine, ctx.settings, webhook_url=receiver.url("/slow/0.3"))
    run_job_to(ctx.engine, job_id, "succeeded")
    (row,) = deliveries(ctx.engine, job_id)
    outcomes: list[str] = []
    threads = [threading.Thread(target=lambda: outcomes.append(deliver(ctx.engine, sender, ctx.settings, row["id"])))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(outcomes) == ["skipped", "skipped", "skipped", "succeeded"]
    assert len(receiver.requests("/slow/0.3")) == 1


class FakeApp:
    def __init__(self) -> None:
        self.sent: list[tuple[str, list[str], str]] = []

    def send_task(self, name: str, args: list[str], queue: str) -> None:
        self.sent.append((name, args, queue))


def test_the_dispatcher_publishes_due_deliveries_once_and_retakes_a_dead_senders(
    ctx: WorkerContext, sender: WebhookSender, receiver: Receiver
) -> None:
    _, job_id = insert_job(ctx.engine, ctx.settings, webhook_url=receiver.url("/ok"))
    run_job_to(ctx.engine, job_id, "succeeded")
    (row,) = deliveries(ctx.engine, job_id)
    fake = FakeApp()
    dispatching = replace(ctx, app=fake)  # type: ignore[arg-type]
    assert publish_due(dispatching) == [str(row["id"])]
    assert fake.sent == [(WEBHOOK_TASK, [str(row["id"])], WEBHOOK_QUEUE)]
    assert publish_due(dispatching) == []  # published recently: not again

    # A worker claims it and dies mid-send (kill -9): nothing is recorded, the lease runs out.
    assert claim(ctx.engine, row["id"], ctx.settings) is not None
    with ctx.engine.begin() as conn:
        conn.execute(update(WebhookDelivery).where(WebhookDelivery.id == row["id"]).values(dispatched_at=None))
    assert publish_due(dispatching) == []  # its lease still holds
    with ctx.engine.begin() as conn:
        conn.execute(update(WebhookDelivery).where(WebhookDelivery.id == row["id"]).values(
            claimed_until=datetime.now(UTC) - timedelta(seconds=1)))
    assert publish_due(dispatching) == [str(row["id"])]
    assert deliver(ctx.engine, sender, ctx.settings, row["id"]) == "succeeded"
    assert [a["attempt"] for a in attempts(ctx.engine, row["id"])] == [2]
    assert len(receiver.requests("/ok")) == 1


def test_a_name_that_resolves_to_a_private_address_is_refused_at_delivery(
    ctx: WorkerContext, receiver: Receiver
) -> None:
    port = receiver.base_url.rsplit(":", 1)[1]
    tenant_id, job_id = insert_job(ctx.engine, ctx.settings)
    add_endpoint(ctx.engine, tenant_id, f"http://hooks.example.test:{port}/ok")  # registered while public
    run_job_to(ctx.engine, job_id, "succeeded")
    strict = WebhookSender(timeout_s=1, allow_private=False, resolver=lambda host, p: ["127.0.0.1"])
    for row in deliveries(ctx.engine, job_id):
        assert deliver(ctx.engine, strict, ctx.settings, row["id"]) == "refused"
        done = delivery(ctx.engine, row["id"])
        assert done["status"] == "failed" and "loopback" in done["last_error"]  # refused: not retried
    strict.close()
    assert receiver.requests() == []


def test_the_sender_resolves_once_and_connects_to_the_checked_address(
    ctx: WorkerContext, receiver: Receiver
) -> None:
    port = receiver.base_url.rsplit(":", 1)[1]
    lookups: list[str] = []

    def rebinding(host: str, _port: int) -> list[str]:
        # The first answer is checked and used; any later lookup would point elsewhere.
        lookups.append(host)
        return ["127.0.0.1"] if len(lookups) == 1 else ["169.254.169.254"]

    _, job_id = insert_job(ctx.engine, ctx.settings, webhook_url=f"http://hooks.example.test:{port}/ok")
    run_job_to(ctx.engine, job_id, "succeeded")
    (row,) = deliveries(ctx.engine, job_id)
    pinned = WebhookSender(timeout_s=1, allow_private=True, resolver=rebinding)
    assert deliver(ctx.engine, pinned, ctx.settings, row["id"]) == "succeeded"
    pinned.close()
    assert lookups == ["hooks.example.test"]
    (got,) = receiver.requests("/ok")
    assert got.headers["host"] == f"hooks.example.test:{port}"


def test_https_checks_the_certificate_against_the_name_while_connecting_to_the_ip(ctx: WorkerContext) -> None:
    server_tls, client_tls = make_tls_contexts(["hooks.example.test"])
    with running_receiver(server_tls) as receiver:
        port = receiver.base_url.rsplit(":", 1)[1]
        tenant_id, job_id = insert_job(ctx.engine, ctx.settings, webhook_url=f"https://hooks.example.test:{port}/ok")
        add_endpoint(ctx.engine, tenant_id, f"https://other.example.test:{port}/ok", ["job.succeeded"])
        run_job_to(ctx.engine, job_id, "succeeded")
        tls = WebhookSender(timeout_s=2, allow_private=True, resolver=lambda host, p: ["127.0.0.1"], verify=client_tls)
        rows = deliveries(ctx.engine, job_id)
        assert deliver(ctx.engine, tls, ctx.settings, only(rows, target="job")["id"]) == "succeeded"
        mismatch = next(r for r in rows if r["target"] != "job")
        assert deliver(ctx.engine, tls, ctx.settings, mismatch["id"]) == "failed"  # cert is not for other.*
        tls.close()
        assert "connection error" in attempts(ctx.engine, mismatch["id"])[0]["error"]
        assert len(receiver.requests("/ok")) == 1


def test_during_a_secret_rotation_both_signatures_verify(
    ctx: WorkerContext, sender: WebhookSender, receiver: Receiver
) -> None:
    tenant_id, job_id = insert_job(ctx.engine, ctx.settings)
    endpoint_id, old = add_endpoint(ctx.engine, tenant_id, receiver.url("/ok"), ["job.succeeded"])
    now = datetime.now(UTC)
    with ctx.engine.begin() as conn:
        conn.execute(repo.rotate_endpoint_secret_stmt(
            tenant_id, endpoint_id, "whsec_" + "A" * 43 + "=", now=now, overlap_until=now + timedelta(hours=1)
        ))
    run_job_to(ctx.engine, job_id, "succeeded")
    (row,) = deliveries(ctx.engine, job_id)
    assert deliver(ctx.engine, sender, ctx.settings, row["id"]) == "succeeded"
    (got,) = receiver.requests("/ok")
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(got.body, got.headers)
    Webhook("whsec_" + "A" * 43 + "=").verify(got.body, got.headers)


def test_webhook_tasks_have_their_own_queue_and_exchange(ctx: WorkerContext) -> None:
    # Bound to the default exchange, the queue would also receive every segmentation message.
    queues = ctx.app.amqp.queues
    assert (queues[WEBHOOK_QUEUE].exchange.name, queues[WEBHOOK_QUEUE].routing_key) == (WEBHOOK_QUEUE, WEBHOOK_QUEUE)
    segmentation = queues[ctx.app.conf.task_default_queue]
    assert (segmentation.exchange.name, segmentation.routing_key) != (WEBHOOK_QUEUE, WEBHOOK_QUEUE)


def test_an_endpoint_failing_for_longer_than_the_disable_window_is_disabled(
    ctx: WorkerContext, sender: WebhookSender, receiver: Receiver
) -> None:
    settings = ctx.settings.model_copy(update={"webhook_retry_schedule_s": (), "webhook_disable_after_s": 3600.0})
    tenant_id, old_job = insert_job(ctx.engine, ctx.settings)
    endpoint_id, _ = add_endpoint(ctx.engine, tenant_id, receiver.url("/status/500"), ["job.succeeded"])
    run_job_to(ctx.engine, old_job, "succeeded")
    (old,) = deliveries(ctx.engine, old_job)
    assert deliver(ctx.engine, sender, settings, old["id"]) == "failed"
    with ctx.engine.begin() as conn:
        assert conn.execute(repo.select_endpoint(tenant_id, endpoint_id)).mappings().one()["disabled_at"] is None
        # Its first failure was two hours ago, with no success since.
        conn.execute(update(WebhookDelivery).where(WebhookDelivery.id == old["id"]).values(
            created_at=datetime.now(UTC) - timedelta(hours=2)))
    _, new_job = insert_job(ctx.engine, ctx.settings, tenant_id)
    run_job_to(ctx.engine, new_job, "succeeded")
    (new,) = deliveries(ctx.engine, new_job)
    assert deliver(ctx.engine, sender, settings, new["id"]) == "failed"
    with ctx.engine.begin() as conn:
        endpoint = conn.execute(repo.select_endpoint(tenant_id, endpoint_id)).mappings().one()
    assert endpoint["disabled_at"] is not None and endpoint["disabled_reason"] == "failing"
