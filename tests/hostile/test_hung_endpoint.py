"""The endpoint hangs: it accepts each scoring request and then trickles its answer one byte every
0.3 s, so no read timeout ever fires. Before: with the default threads pool Celery enforces no time
limit, and the job stayed ``running`` for as long as the endpoint kept trickling (the heartbeat kept
renewing its lease). Now every endpoint request of a job ends by the job's soft time limit and the
job fails with the code ``timeout``; the worker goes on with other jobs."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.support.stack import HealthWatch

SOFT_LIMIT_S = 4.0
ENV = {
    "MEDPARSE_TASK_SOFT_TIME_LIMIT_S": str(SOFT_LIMIT_S),
    "MEDPARSE_TASK_TIME_LIMIT_S": "6",
    # Per request the endpoint would get far longer than the job: the job's limit must win.
    "MEDPARSE_ENDPOINT_READ_TIMEOUT_S": "20",
    "MEDPARSE_ENDPOINT_REQUEST_DEADLINE_S": "30",
    "MEDPARSE_ENDPOINT_MAX_TOTAL_S": "120",
}


def emulator_config(stack: Any, **knobs: Any) -> None:
    httpx.post(
        f"{stack.emulator_url}/_emulator/config", json=knobs,
        headers={"Authorization": f"Bearer {stack.emulator_key}"}, timeout=5,
    ).raise_for_status()


def test_a_hung_endpoint_ends_the_job_within_its_time_limit(make_stack: Any) -> None:
    stack = make_stack(**ENV)
    key = stack.new_tenant("tenant-hung")
    worker_pid = stack.workers[0].pid
    # The worker is up and scoring before the endpoint starts to hang.
    stack.check_other_tenant_completes(timeout=60)
    emulator_config(stack, hang_rate=1.0, hang_mode="trickle", hang_trickle_interval_s=0.3)
    with HealthWatch(stack.base_url) as watch:
        began = time.monotonic()
        resp = stack.submit(key)
        assert resp.status_code == 202, resp.text
        job = stack.wait_done(key, resp.json()["id"], timeout=30)
        ended_s = time.monotonic() - began
    print(f"hung endpoint: job {job['status']} ({(job['error'] or {}).get('code')}) after {ended_s:.2f} s")
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "timeout" and "time limit" in job["error"]["message"], job["error"]
    # the soft limit, plus the claim, the dispatcher's round and the poll
    assert SOFT_LIMIT_S <= ended_s < SOFT_LIMIT_S + 4, ended_s
    watch.assert_healthy(limit_s=1.0)

    # The same worker process goes on with other jobs once the endpoint answers again.
    emulator_config(stack, hang_rate=0.0)
    stack.check_other_tenant_completes(timeout=30)
    assert stack.workers[0].poll() is None and stack.workers[0].pid == worker_pid
    stack.assert_gateway_alive()
