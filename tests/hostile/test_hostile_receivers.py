"""Tenant A's webhook receivers trickle their answers (one byte every 0.3 s, so no single
read ever times out). Before: 12 such deliveries took every segmentation thread and tenant B's
next job stayed queued over 60 s, the deliveries stuck in ``sending`` with 0 attempts. Now they
are sent by their own worker role, each attempt ends at ``webhook_attempt_deadline_s`` and is
recorded as failed, and a tenant has at most ``webhook_max_in_flight_per_tenant`` being sent."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from tests.support.stack import HealthWatch
from tests.support.webhook_receiver import running_receiver

ENV = {
    "MEDPARSE_WEBHOOK_ATTEMPT_DEADLINE_S": "1",
    "MEDPARSE_WEBHOOK_TIMEOUT_S": "10",  # per read: longer than the trickle interval, never fires
    "MEDPARSE_WEBHOOK_RETRY_SCHEDULE_S": "[30]",  # retries are not what this test is about
    "MEDPARSE_WEBHOOK_RETRY_JITTER": "0",
    "MEDPARSE_WEBHOOK_DISPATCH_INTERVAL_S": "0.2",
    "MEDPARSE_WEBHOOK_MAX_IN_FLIGHT_PER_TENANT": "2",
    "MEDPARSE_WEBHOOK_SLOT_WAIT_S": "0.3",
}
JOBS_OF_A = 12


def max_overlap(attempts: list[dict[str, Any]]) -> int:
    """Most attempts in progress at one instant, from their start times and durations."""
    edges: list[tuple[float, int]] = []
    for a in attempts:
        began = datetime.fromisoformat(a["started_at"]).timestamp()
        edges += [(began, 1), (began + a["duration_ms"] / 1000, -1)]
    now = peak = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):
        now += step
        peak = max(peak, now)
    return peak


def test_trickling_receivers_of_one_tenant_do_not_slow_another_tenants_jobs(make_stack: Any) -> None:
    stack = make_stack(**ENV)
    key_a, key_b = stack.new_tenant("tenant-a"), stack.new_tenant("tenant-b")
    with running_receiver() as receiver, HealthWatch(stack.base_url) as watch:
        trickle, ok = receiver.url("/trickle/0.3"), receiver.url("/ok")
        jobs_a = []
        for _ in range(JOBS_OF_A):
            resp = stack.submit(key_a, webhook_url=trickle)
            assert resp.status_code == 202, resp.text
            jobs_a.append(resp.json()["id"])
        t0 = time.monotonic()
        for job_id in jobs_a:
            assert stack.wait_done(key_a, job_id, 60)["status"] == "succeeded"
        print(f"tenant A: {JOBS_OF_A} jobs succeeded after {time.monotonic() - t0:.2f} s")
        # A's deliveries are now being trickled at: B's job and B's own webhook go through at once.
        time.sleep(1.0)
        began = time.monotonic()
        resp = stack.submit(key_b, webhook_url=ok)
        assert resp.status_code == 202, resp.text
        job_b = stack.wait_done(key_b, resp.json()["id"], 60)
        b_done_s = time.monotonic() - began
        assert job_b["status"] == "succeeded", job_b
        receiver.wait_for("/ok", 1, timeout=10)
        b_webhook_s = time.monotonic() - began
        print(f"tenant B: job succeeded after {b_done_s:.2f} s, its webhook arrived after {b_webhook_s:.2f} s")
        assert b_done_s < 10, b_done_s
        assert b_webhook_s < 10, b_webhook_s

        # Every one of A's deliveries gets attempts recorded as failed with the deadline as reason.
        deadline = time.monotonic() + 60
        with stack.client(key_a) as http:
            while True:
                rows = http.get("/v1/deliveries", params={"limit": 100}).json()["data"]
                tried = [d for d in rows if d["attempts"]]
                if len(tried) == JOBS_OF_A or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        print(f"tenant A: every delivery tried after {time.monotonic() - began:.2f} s")
        assert len(rows) == JOBS_OF_A and len(tried) == JOBS_OF_A, [d["status"] for d in rows]
        all_attempts = [a for d in rows for a in d["attempts"]]
        assert all(a["outcome"] == "failed" and "attempt deadline of 1 s" in a["error"] for a in all_attempts)
        assert all(a["duration_ms"] < 2000 for a in all_attempts), max(a["duration_ms"] for a in all_attempts)
        # Never more than the tenant's cap being sent at once (small slack for clock rounding).
        assert max_overlap(all_attempts) <= 2, max_overlap(all_attempts)
        print(f"tenant A: {len(all_attempts)} attempts, each {min(a['duration_ms'] for a in all_attempts)}-"
              f"{max(a['duration_ms'] for a in all_attempts)} ms, at most {max_overlap(all_attempts)} at once")
        stack.check_other_tenant_completes(timeout=30)
    watch.assert_healthy(limit_s=1.0)
    stack.assert_gateway_alive()
    assert all(proc.poll() is None for proc in stack.workers), "a worker died"
