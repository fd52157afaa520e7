"""Webhook delivery cannot hold a worker: a deadline per attempt, and per-tenant/per-host slots.

Real Postgres, real Redis, a real receiver on 127.0.0.1 that trickles its answer (one byte at a
time, so no single read ever times out). The task body (``deliver``) runs in the test process.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
import redis
from sqlalchemy import Engine

from db.engine import make_sync_engine
from medparse.settings import Settings
from medparse.webhooks.slots import LocalDeliverySlots, RedisDeliverySlots, SlotRequest, make_delivery_slots
from tests.support.webhook_receiver import Receiver, running_receiver
from tests.support.webhooks import attempts, deliveries, delivery, insert_job, run_job_to
from workers.webhook_delivery import deliver, lease_seconds
from workers.webhook_tasks import make_sender, publish_due


@pytest.fixture
def settings(pg_settings: Settings) -> Settings:
    return pg_settings.model_copy(update={
        "webhook_allow_private_targets": True, "webhook_retry_schedule_s": (0.3, 0.3), "webhook_retry_jitter": 0.0,
        "webhook_timeout_s": 5.0, "webhook_attempt_deadline_s": 1.0, "webhook_slot_wait_s": 0.5,
        "webhook_max_in_flight_per_tenant": 1, "webhook_max_in_flight_per_host": 2,
    })


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    eng = make_sync_engine(settings, system_scope=True)
    yield eng
    eng.dispose()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


@pytest.fixture
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url or "")
    yield client
    client.close()


def pending_delivery(engine: Engine, settings: Settings, url: str) -> tuple[uuid.UUID, uuid.UUID]:
    tenant_id, job_id = insert_job(engine, settings, webhook_url=url)
    run_job_to(engine, job_id, "succeeded")
    (row,) = deliveries(engine, job_id)
    return tenant_id, row["id"]


def test_a_trickling_receiver_is_a_recorded_failed_attempt_at_the_deadline(
    engine: Engine, settings: Settings, receiver: Receiver
) -> None:
    # One byte every 0.2 s: the 5 s per-read timeout never fires; the 1 s attempt deadline does.
    _, delivery_id = pending_delivery(engine, settings, receiver.url("/trickle/0.2"))
    sender = make_sender(settings)
    try:
        began = time.monotonic()
        assert deliver(engine, sender, settings, delivery_id) == "failed"
        elapsed = time.monotonic() - began
    finally:
        sender.close()
    assert elapsed < 2.0, elapsed
    (attempt,) = attempts(engine, delivery_id)
    assert attempt["outcome"] == "failed" and attempt["status_code"] is None
    assert "attempt deadline of 1 s" in attempt["error"], attempt["error"]
    row = delivery(engine, delivery_id)
    # Retried on the schedule, never left "sending".
    assert row["status"] == "pending" and row["failures"] == 1 and row["claimed_until"] is None
    assert row["next_attempt_at"] > datetime.now(UTC)


def test_a_delivery_without_a_free_tenant_slot_waits_without_an_attempt(
    engine: Engine, settings: Settings, receiver: Receiver, redis_client: redis.Redis
) -> None:
    tenant_id, delivery_id = pending_delivery(engine, settings, receiver.url("/ok"))
    slots = make_delivery_slots(settings, redis_client, lease_s=lease_seconds(settings))
    host = receiver.base_url.removeprefix("http://")
    busy = slots.try_acquire(SlotRequest(str(tenant_id), host))  # another delivery of the tenant is sending
    assert busy is not None
    sender = make_sender(settings)
    try:
        assert deliver(engine, sender, settings, delivery_id, slots) == "postponed"
        row = delivery(engine, delivery_id)
        assert (row["status"], row["attempts"], row["failures"], row["dispatched_at"]) == ("pending", 0, 0, None)
        assert attempts(engine, delivery_id) == [] and receiver.requests("/ok") == []
        assert deliver(engine, sender, settings, delivery_id, slots) == "skipped"  # waits its turn
        slots.release(busy)
        time.sleep(settings.webhook_slot_wait_s + 0.05)
        assert deliver(engine, sender, settings, delivery_id, slots) == "succeeded"
    finally:
        sender.close()
    assert [a["attempt"] for a in attempts(engine, delivery_id)] == [1]
    # Released after the attempt: the tenant's slot is free again.
    again = slots.try_acquire(SlotRequest(str(tenant_id), host))
    assert again is not None
    slots.release(again)


def test_redis_slots_bound_each_tenant_and_each_host(settings: Settings, redis_client: redis.Redis) -> None:
    slots = RedisDeliverySlots(redis_client, settings.redis_namespace, per_tenant=2, per_host=3, lease_s=0.5)
    a1 = slots.try_acquire(SlotRequest("a", "h1:443"))
    a2 = slots.try_acquire(SlotRequest("a", "h2:443"))
    assert a1 and a2
    assert slots.try_acquire(SlotRequest("a", "h3:443")) is None  # tenant a is full
    b1 = slots.try_acquire(SlotRequest("b", "h1:443"))
    c1 = slots.try_acquire(SlotRequest("c", "h1:443"))
    assert b1 and c1
    assert slots.try_acquire(SlotRequest("d", "h1:443")) is None  # host h1 is full (a, b, c)
    # A refused request took nothing: d still has its whole tenant quota elsewhere.
    d1 = slots.try_acquire(SlotRequest("d", "h2:443"))
    assert d1 is not None
    slots.release(a1)
    assert slots.try_acquire(SlotRequest("a", "h3:443")) is not None
    # A crashed holder's slot comes back when its lease ends.
    time.sleep(0.6)
    assert slots.try_acquire(SlotRequest("d", "h1:443")) is not None


def test_local_slots_bound_each_tenant_and_each_host() -> None:
    slots = LocalDeliverySlots(per_tenant=1, per_host=2)
    a = slots.try_acquire(SlotRequest("a", "h:80"))
    assert a is not None and slots.try_acquire(SlotRequest("a", "other:80")) is None
    b = slots.try_acquire(SlotRequest("b", "h:80"))
    assert b is not None and slots.try_acquire(SlotRequest("c", "h:80")) is None
    slots.release(a)
    assert slots.try_acquire(SlotRequest("c", "h:80")) is not None



class FakeApp:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def send_task(self, name: str, args: list[str], queue: str) -> None:
        self.sent.append(args[0])


@dataclass
class Publisher:
    settings: Settings
    engine: Engine
    app: FakeApp


def test_the_dispatcher_publishes_a_bounded_share_of_each_tenants_backlog(
    engine: Engine, settings: Settings, receiver: Receiver
) -> None:
    busy_tenant, first = pending_delivery(engine, settings, receiver.url("/ok"))
    backlog = [first]
    for _ in range(4):
        _, job_id = insert_job(engine, settings, busy_tenant, webhook_url=receiver.url("/ok"))
        run_job_to(engine, job_id, "succeeded")
        backlog += [row["id"] for row in deliveries(engine, job_id)]
    _, other = pending_delivery(engine, settings, receiver.url("/ok"))
    publisher = Publisher(settings, engine, FakeApp())
    # webhook_max_in_flight_per_tenant=1: two of the busy tenant's five per pass, and the other's one
    published = publish_due(publisher)  # type: ignore[arg-type]
    assert len(published) == 3 and str(other) in published
    assert set(published) - {str(other)} <= {str(d) for d in backlog}
    # The rest of the backlog follows, two per pass (a pass each webhook_dispatch_interval_s).
    assert len(publish_due(publisher)) == 2  # type: ignore[arg-type]
    assert len(publish_due(publisher)) == 1  # type: ignore[arg-type]
    assert publish_due(publisher) == []  # type: ignore[arg-type]
    assert len(publisher.app.sent) == 6
