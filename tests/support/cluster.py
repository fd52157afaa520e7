"""A whole deployment in real processes (emulator with faults, gateway, workers) for chaos tests,
plus the invariants that must hold after any crash ("nothing lost"), checked in Postgres itself.
"""

from __future__ import annotations

import base64
import secrets
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import func, select

from db.engine import make_sync_engine
from db.models import Job, JobMask, WebhookDelivery
from medparse.settings import Settings
from tests.support.factories import organ_image
from tests.support.ports import free_port
from tests.support.processes import settings_env, start, stop, wait_http
from tests.support.webhook_receiver import Receiver
from workers.pipeline import call_id

TERMINAL = {"succeeded", "failed", "canceled"}

#: Short leases and sweeps so recovery happens within seconds, not the production minutes.
FAST_RECOVERY = {
    "MEDPARSE_JOB_LEASE_S": "6",
    "MEDPARSE_JOB_HEARTBEAT_S": "2",
    "MEDPARSE_SWEEP_INTERVAL_S": "1",
    "MEDPARSE_REDISPATCH_AFTER_S": "8",
    "MEDPARSE_DISPATCH_INTERVAL_S": "0.3",
    "MEDPARSE_TASK_SOFT_TIME_LIMIT_S": "40",
    "MEDPARSE_TASK_TIME_LIMIT_S": "45",
    "MEDPARSE_BROKER_VISIBILITY_TIMEOUT_S": "60",
    "MEDPARSE_ENDPOINT_BACKOFF_MIN_S": "0.05",
    "MEDPARSE_ENDPOINT_BACKOFF_MAX_S": "0.5",
    "MEDPARSE_ENDPOINT_MAX_ATTEMPTS": "10",
    "MEDPARSE_JOB_MAX_ATTEMPTS": "6",
    "MEDPARSE_TENANT_RATE_LIMIT_RPS": "2000",
    "MEDPARSE_TENANT_RATE_LIMIT_BURST": "4000",
    "MEDPARSE_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
    "MEDPARSE_WEBHOOK_DISPATCH_INTERVAL_S": "0.5",
    "MEDPARSE_WEBHOOK_RETRY_SCHEDULE_S": "[1, 2, 3, 5, 8]",
}


@dataclass
class Submissions:
    """Idempotency key -> job id, for every submission the gateway answered 202."""

    accepted: dict[str, str] = field(default_factory=dict)
    retries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Cluster:
    def __init__(self, settings: Settings, tmp: Path, *, latency_ms: int = 300, faults: str = "500=0.03,429=0.02"):
        self.settings = settings
        self.tmp = tmp
        self.emulator_key = secrets.token_urlsafe(16)
        self.emulator_port = free_port()
        self.gateway_port = free_port()
        self.latency_ms = latency_ms
        self.faults = faults
        self.env = settings_env(
            settings,
            MEDPARSE_PORT=str(self.gateway_port),
            MEDPARSE_ENDPOINT_SCORING_URI=f"http://127.0.0.1:{self.emulator_port}/score",
            MEDPARSE_ENDPOINT_KEY=self.emulator_key,
            **FAST_RECOVERY,
        )
        self.emulator: subprocess.Popen[bytes] | None = None
        self.gateway: subprocess.Popen[bytes] | None = None
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.webhook_worker: subprocess.Popen[bytes] | None = None
        self.image, _ = organ_image(96, 80)
        #: where every job's terminal events go (set by tests that check webhook delivery)
        self.webhook_url: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def start_emulator(self) -> None:
        env = {**self.env, "MEDPARSE_EMULATOR_KEY": self.emulator_key}
        self.emulator = start(
            ["emulator", "--port", str(self.emulator_port), "--latency-ms", str(self.latency_ms),
             "--latency-jitter-ms", "100", "--fault", self.faults],
            env, self.tmp / "emulator.log",
        )
        wait_http(f"http://127.0.0.1:{self.emulator_port}/", proc=self.emulator)

    def start_gateway(self) -> None:
        self.gateway = start(["serve"], self.env, self.tmp / "gateway.log")
        wait_http(f"{self.base_url}/healthz", proc=self.gateway)

    def kill_gateway(self) -> None:
        assert self.gateway is not None
        self.gateway.kill()
        self.gateway.wait()

    def start_worker(self, n: int) -> None:
        self.workers[n] = start(["worker", "--concurrency", "4"], self.env, self.tmp / f"worker-{n}.log")

    def kill_worker(self, n: int) -> None:
        self.workers[n].kill()  # SIGKILL: no warm shutdown, tasks in flight and reserved are lost
        self.workers[n].wait()

    def start_all(self, workers: int = 2) -> None:
        self.start_emulator()
        self.start_gateway()
        for n in range(workers):
            self.start_worker(n)
        # Webhooks are delivered by their own worker role (its own queue and threads).
        self.webhook_worker = start(
            ["worker", "--role", "webhooks", "--concurrency", "2"], self.env, self.tmp / "webhook-worker.log"
        )

    def stop_all(self) -> None:
        for proc in [*self.workers.values(), self.webhook_worker, self.gateway, self.emulator]:
            if proc is not None:
                stop(proc)

    # --- clients ------------------------------------------------------------------------------

    def submit(self, key: str, count: int, out: Submissions, *, prefix: str = "job", deadline_s: float = 90) -> None:
        """Submit ``count`` jobs, retrying each with its own Idempotency-Key until a 202."""
        body: dict[str, Any] = {"image_base64": base64.b64encode(self.image).decode(), "prompts": "liver & tumor"}
        if self.webhook_url is not None:
            body["webhook_url"] = self.webhook_url
        with httpx.Client(base_url=self.base_url, timeout=10) as http:
            for i in range(count):
                idem = f"{prefix}-{i}"
                deadline = time.monotonic() + deadline_s
                while True:
                    try:
                        resp = http.post(
                            "/v1/jobs", json=body, headers={"Authorization": f"Bearer {key}", "Idempotency-Key": idem}
                        )
                        if resp.status_code == 202:
                            with out.lock:
                                out.accepted[idem] = resp.json()["id"]
                            break
                        assert resp.status_code in (409, 429, 500, 502, 503), resp.text
                    except httpx.HTTPError:
                        pass
                    with out.lock:
                        out.retries += 1
                    assert time.monotonic() < deadline, f"{idem} was never accepted"
                    time.sleep(0.2)

    def submit_in_background(self, key: str, count: int, out: Submissions, prefix: str = "job") -> threading.Thread:
        thread = threading.Thread(target=self.submit, args=(key, count, out), kwargs={"prefix": prefix}, daemon=True)
        thread.start()
        return thread

    def emulator_stats(self) -> dict[str, Any]:
        resp = httpx.get(
            f"http://127.0.0.1:{self.emulator_port}/_emulator/stats",
            headers={"Authorization": f"Bearer {self.emulator_key}"}, timeout=10,
        )
        resp.raise_for_status()
        return resp.json()  # type: ignore[no-any-return]

    # --- waiting and invariants -------------------------------------------------------------------

    def job_rows(self, job_ids: list[str]) -> dict[str, dict[str, Any]]:
        engine = make_sync_engine(self.settings, system_scope=True)
        try:
            with engine.begin() as conn:
                rows = conn.execute(
                    select(Job.id, Job.status, Job.attempts, Job.prompt_count, Job.error_code)
                    .where(Job.id.in_([uuid.UUID(j) for j in job_ids]))
                ).mappings()
                return {str(r["id"]): dict(r) for r in rows}
        finally:
            engine.dispose()

    def wait_terminal(self, job_ids: list[str], timeout_s: float = 120, tick: Callable[[], None] | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = self.job_rows(job_ids)
            if len(rows) == len(job_ids) and all(r["status"] in TERMINAL for r in rows.values()):
                return
            if tick is not None:
                tick()
            time.sleep(0.5)
        pending = {j: r["status"] for j, r in self.job_rows(job_ids).items() if r["status"] not in TERMINAL}
        raise AssertionError(f"{len(pending)} jobs not terminal after {timeout_s} s: {list(pending.items())[:5]}")

    def assert_nothing_lost(self, submissions: Submissions, *, min_succeeded_ratio: float = 0.9) -> dict[str, int]:
        """The invariants of issue 6, checked against Postgres and the endpoint's own request log."""
        job_ids = list(submissions.accepted.values())
        assert len(set(job_ids)) == len(job_ids), "two Idempotency-Keys were answered with the same job"
        rows = self.job_rows(job_ids)
        assert set(rows) == set(job_ids), "a job answered 202 is missing from the database"
        not_terminal = [j for j, r in rows.items() if r["status"] not in TERMINAL]
        assert not not_terminal, f"jobs left unfinished: {not_terminal[:5]}"
        failed = {j: r["error_code"] for j, r in rows.items() if r["status"] == "failed"}
        assert all(code for code in failed.values()), "a failed job without a reason"
        succeeded = [j for j, r in rows.items() if r["status"] == "succeeded"]
        assert len(succeeded) >= min_succeeded_ratio * len(job_ids), f"too many failures: {failed}"
        engine = make_sync_engine(self.settings, system_scope=True)
        with engine.begin() as conn:
            # The database is this cluster's own and every key was retried to a 202: a job beyond
            # the 202s is a second job for one key (its first answer was lost, the retry made another).
            total = conn.execute(select(func.count()).select_from(Job)).scalar_one()
            assert total == len(job_ids), f"{total - len(job_ids)} job(s) beyond the 202s: a key produced two jobs"
            masks = dict(
                conn.execute(
                    select(JobMask.job_id, func.count()).where(JobMask.job_id.in_([uuid.UUID(j) for j in job_ids]))
                    .group_by(JobMask.job_id)
                ).all()
            )
        engine.dispose()
        for job_id in succeeded:  # exactly one result set: one mask per prompt, no more
            assert masks.get(uuid.UUID(job_id)) == rows[job_id]["prompt_count"], job_id
        seen = set(self.emulator_stats()["client_request_ids"])
        calls = 0
        for job_id, row in rows.items():
            for attempt in range(1, row["attempts"] + 5):
                if call_id(job_id, attempt) in seen:
                    calls += 1
                    assert attempt <= row["attempts"], f"{job_id} was called for attempt {attempt} > attempts"
        known = {call_id(j, a) for j, r in rows.items() for a in range(1, r["attempts"] + 1)}
        assert seen <= known, "the endpoint saw calls no job attempt accounts for"
        return {"jobs": len(job_ids), "succeeded": len(succeeded), "failed": len(failed), "endpoint_calls": calls}

    def assert_webhooks_delivered(self, submissions: Submissions, receiver: Receiver, timeout_s: float = 90) -> int:
        """Every terminal job's event was delivered, under one ``webhook-id`` however often it was sent."""
        job_ids = {uuid.UUID(j) for j in submissions.accepted.values()}
        engine = make_sync_engine(self.settings, system_scope=True)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                with engine.begin() as conn:
                    rows = conn.execute(
                        select(WebhookDelivery.id, WebhookDelivery.job_id, WebhookDelivery.event_type,
                               WebhookDelivery.status).where(WebhookDelivery.job_id.in_(job_ids))
                    ).all()
                if len(rows) == len(job_ids) and all(r.status == "succeeded" for r in rows):
                    break
                assert time.monotonic() < deadline, (
                    f"{sum(r.status == 'succeeded' for r in rows)} of {len(job_ids)} webhook events delivered"
                )
                time.sleep(0.5)
        finally:
            engine.dispose()
        # One event row per job (the default events are the terminal ones), all delivered ...
        assert sorted(r.job_id for r in rows) == sorted(job_ids)
        expected = {f"msg_{r.id.hex}": (str(r.job_id), r.event_type) for r in rows}
        seen: dict[tuple[str, str], set[str]] = {}
        for request in receiver.requests("/events"):
            payload = orjson.loads(request.body)
            seen.setdefault((payload["data"]["id"], payload["type"]), set()).add(request.headers["webhook-id"])
        # ... and the receiver got each one under exactly its event's webhook-id, retries included.
        for webhook_id, key in expected.items():
            assert seen.get(key) == {webhook_id}, (key, seen.get(key))
        return len(receiver.requests("/events"))
