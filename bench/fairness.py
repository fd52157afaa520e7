"""Fair dispatch under load: how long does tenant B wait behind tenant A's 5,000-job backlog?

Run with ``.venv/bin/python -m bench.fairness`` (about 1-2 minutes; ``--help`` for knobs). Needs the
machine's PostgreSQL (127.0.0.1:5432, trust) and Redis (127.0.0.1:6379); override with
``MEDPARSE_TEST_PG_URL`` / ``MEDPARSE_TEST_REDIS_URL``.

Set-up (private to this run, torn down at the end even on failure): a throwaway Postgres database
``medparse_fair_<random>`` (created, migrated, dropped), random Redis namespaces ``mpfair-<random>``
(their keys deleted after the processes stopped), and subprocesses started
as tests/support/processes.py starts them: the endpoint emulator (``--latency-ms 200 --max-concurrent 8``),
one gateway (tenant rate limit and queued-jobs quota raised through ``MEDPARSE_TENANT_RATE_LIMIT_RPS`` /
``_BURST`` / ``MEDPARSE_TENANT_MAX_QUEUED_JOBS``) and two
``medparse worker --concurrency 8`` processes, all with ``MEDPARSE_LOG_LEVEL=WARNING``.

Phase ``fair`` (the product's defaults from medparse/settings.py: ``MEDPARSE_DISPATCH_WINDOW`` and
``MEDPARSE_TENANT_MAX_RUNNING_JOBS``, unless ``--window`` / ``--cap`` say otherwise):

1. tenant A's backlog (``--backlog`` jobs, 5,000) is submitted through ``POST /v1/jobs`` (a small PNG,
   ``--submit-concurrency`` connections) while no worker runs, so the whole backlog is queued. If the
   API path does not finish within ``--api-budget-s`` the rest is bulk-inserted into Postgres exactly
   as the gateway stores a job (``jobs`` + ``job_inputs`` rows, same PNG); the output says how many
   went which way. ``--submit bulk`` inserts everything directly.
2. the two workers start; once they are busy with A's jobs (``WARM_COMPLETED`` done, steady for
   ``WARM_S``), tenant B submits ``--b-jobs`` single jobs, one every ``--b-gap-s``, each a
   ``POST /v1/jobs`` with ``Prefer: wait=60`` in its own thread.
3. from Postgres: each B job's queue wait (created_at -> started_at) and total (-> completed_at); the
   client's wall clock (send -> 202 with the terminal job); how many of A's jobs were created before B
   and had not started when B started (the backlog B overtook) and when B was submitted (what a FIFO
   queue would have made B wait for); A's start rate (jobs/s) over the B window.

FIFO-equivalent wait of a B job = (A's jobs ahead of it at submit) / (A's start rate): a plain single
Celery queue starts jobs in submission order, so B starts once everything ahead of it has started.

Phase ``fifo`` (validation of that estimate, same run, ``--fifo-backlog`` A' jobs, skipped by
``--no-fifo``): the fair phase's unfinished jobs are canceled, and a new gateway and two new workers
(in a fresh Redis namespace, so no message of the fair phase is left in the broker) run with
``MEDPARSE_DISPATCH_WINDOW=100000`` and ``MEDPARSE_TENANT_MAX_RUNNING_JOBS=100000``: the dispatcher pushes
every queued job to the broker in submission order - a plain FIFO queue. B's jobs are submitted once
that whole round is in the broker, and their measured wait is compared with ahead / rate.

PASS: every B job's queue wait <= ``--max-wait-s`` (2 s: about one dispatch round plus one job time at
200 ms latency) while A's backlog at B's start was >= ``--min-backlog`` (4,000) for every B job.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import httpx
import numpy as np
import psycopg
import redis
from psycopg.types.json import Json

from medparse.settings import Settings
from tests.support.factories import ct_slice_png
from tests.support.ports import free_port
from tests.support.processes import stop, wait_http
from tests.support.throwaway import REDIS_URL, throwaway_database, throwaway_namespace

REPO = Path(__file__).resolve().parent.parent

PROMPT = "liver"
STARTUP_TIMEOUT_S = 60.0
#: Workers count as "busy with A" once this many A jobs completed and the workers ran WARM_S more.
WARM_COMPLETED = 16
WARM_S = 3.0
#: No phase waits longer than this for the workers to warm up or for a B job to finish.
WARM_TIMEOUT_S = 60.0
B_TIMEOUT_S = 75.0
#: The drain-rate window starts this long before the first B job.
PRE_B_S = 3.0
POLL_S = 0.25


# --- helpers -------------------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def multipart_body(image: bytes, prompts: str) -> tuple[bytes, str]:
    """One pre-built multipart body (cheap to send 5,000 times from a 2-core box)."""
    boundary = f"mpbench{uuid.uuid4().hex}"
    head = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"prompts\"\r\n\r\n{prompts}\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"scan.png\"\r\n"
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    return head + image + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# --- the throwaway environment -----------------------------------------------------------------

def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDPARSE_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "runtime.cli", *args], env=env, cwd=REPO,
            stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )


class Procs:
    """Every subprocess this run started; all stopped at the end, also on failure."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.all: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], env: dict[str, str], log: str) -> subprocess.Popen[bytes]:
        proc = start(args, env, self.tmp / log)
        self.all.append(proc)
        return proc

    def stop(self, procs: list[subprocess.Popen[bytes]]) -> None:
        # SIGTERM all first (Celery's warm shutdown runs in parallel), then wait for each.
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            stop(proc)

    def mark(self) -> int:
        return len(self.all)

    def stop_since(self, mark: int) -> None:
        """Stop what was started after ``mark()`` returned ``mark``."""
        self.stop(list(reversed(self.all[mark:])))

    def stop_all(self) -> None:
        self.stop_since(0)


# --- database reads and writes (superuser connection: row-level security does not apply) ---------

def pg(conninfo: str) -> psycopg.Connection[Any]:
    return psycopg.connect(conninfo, autocommit=True, connect_timeout=5)


def status_counts(conninfo: str, tenant: uuid.UUID) -> dict[str, int]:
    with pg(conninfo) as conn:
        rows = conn.execute(
            "SELECT status, count(*) FROM jobs WHERE tenant_id = %s GROUP BY status", (tenant,)
        ).fetchall()
    return {status: int(n) for status, n in rows}


def bulk_insert(conninfo: str, tenant: uuid.UUID, image: bytes, count: int) -> list[uuid.UUID]:
    """``count`` queued jobs stored as the gateway stores them (db.jobs.insert_job_statements)."""
    decoded = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded is not None
    h, w = decoded.shape[:2]
    ids = [uuid.uuid4() for _ in range(count)]
    start_ts = datetime.now(UTC)
    with pg(conninfo) as conn, conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO jobs (id, tenant_id, status, prompts, options, input_format, input_width, input_height,"
            " input_bytes, created_at, updated_at, dispatched_at, attempts, priority, prompt_count)"
            " VALUES (%s, %s, 'queued', %s, %s, 'png', %s, %s, %s, %s, %s, NULL, 0, 0, 1)",
            [(job_id, tenant, Json([PROMPT]), Json({}), w, h, len(image),
              start_ts + timedelta(microseconds=i), start_ts + timedelta(microseconds=i))
             for i, job_id in enumerate(ids)],
        )
        cur.executemany("INSERT INTO job_inputs (job_id, data) VALUES (%s, %s)", [(j, image) for j in ids])
    return ids


def cancel_unfinished(conninfo: str) -> int:
    """End every queued/running job (between phases, with no worker running)."""
    with pg(conninfo) as conn:
        cur = conn.execute(
            "UPDATE jobs SET status = 'canceled', completed_at = now(), updated_at = now()"
            " WHERE status IN ('queued', 'running')"
        )
        return cur.rowcount


@dataclass
class BJob:
    index: int
    sent: float  # wall clock (time.time()) when the POST was sent
    received: float | None = None
    job_id: str | None = None
    status: str | None = None
    error: str | None = None
    created: float | None = None
    started: float | None = None
    completed: float | None = None
    #: A's jobs created before this job and not started at its submit / at its start
    ahead_at_submit: int = 0
    backlog_at_start: int = 0
    #: seconds in endpoint calls (jobs.endpoint_seconds); the rest of started -> completed is the
    #: worker's own time, mostly waiting for a global in-flight slot behind A's running jobs
    endpoint_s: float = 0.0


def fill_from_db(conninfo: str, bjobs: list[BJob], ahead_tenant: uuid.UUID) -> None:
    with pg(conninfo) as conn:
        for b in bjobs:
            if b.job_id is None:
                continue
            row = conn.execute(
                "SELECT extract(epoch FROM created_at), extract(epoch FROM started_at),"
                " extract(epoch FROM completed_at), status, endpoint_seconds FROM jobs WHERE id = %s",
                (uuid.UUID(b.job_id),),
            ).fetchone()
            if row is None:
                continue
            b.created, b.started, b.completed = (None if v is None else float(v) for v in row[:3])
            b.status = row[3]
            b.endpoint_s = float(row[4] or 0.0)
            job_uuid = uuid.UUID(b.job_id)
            row = conn.execute(AHEAD_SQL.format(at="b.created_at"), (job_uuid, ahead_tenant)).fetchone()
            b.ahead_at_submit = int(row[0]) if row else 0
            if b.started is not None:
                row = conn.execute(AHEAD_SQL.format(at="b.started_at"), (job_uuid, ahead_tenant)).fetchone()
                b.backlog_at_start = int(row[0]) if row else 0


#: ``ahead_tenant``'s jobs created before job b and not started at b's {at} (a FIFO's queue ahead of b).
AHEAD_SQL = (
    "SELECT count(*) FROM jobs a JOIN jobs b ON b.id = %s WHERE a.tenant_id = %s AND a.created_at < b.created_at"
    " AND (a.started_at IS NULL OR a.started_at > {at})"
)


def start_rate(conninfo: str, tenant: uuid.UUID, t0: float, t1: float) -> tuple[float, float, int, int]:
    """(starts/s, completions/s, starts, completions) of ``tenant``'s jobs in [t0, t1] (epoch s)."""
    with pg(conninfo) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE started_at BETWEEN to_timestamp(%s) AND to_timestamp(%s)),"
            " count(*) FILTER (WHERE status = 'succeeded' AND completed_at BETWEEN to_timestamp(%s)"
            " AND to_timestamp(%s)) FROM jobs WHERE tenant_id = %s",
            (t0, t1, t0, t1, tenant),
        ).fetchone()
    starts, done = row if row else (0, 0)
    span = max(1e-6, t1 - t0)
    return starts / span, done / span, int(starts), int(done)


# --- submitting ---------------------------------------------------------------------------------

async def _submit_api(base: str, api_key: str, body: bytes, ctype: str, count: int, concurrency: int,
                      budget_s: float) -> tuple[int, float, dict[int, int]]:
    """POST up to ``count`` jobs within ``budget_s``; returns (accepted, seconds, non-202 statuses)."""
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": ctype}
    accepted = 0
    issued = 0
    errors: dict[int, int] = {}
    t0 = time.monotonic()
    deadline = t0 + budget_s
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout
    ) as session:
        async def runner() -> None:
            nonlocal accepted, issued
            while issued < count and time.monotonic() < deadline:
                issued += 1
                for attempt in range(5):  # bounded retries on 429/503
                    async with session.post(f"{base}/v1/jobs", data=body, headers=headers) as resp:
                        await resp.read()
                        if resp.status == 202:
                            accepted += 1
                            break
                        errors[resp.status] = errors.get(resp.status, 0) + 1
                        if resp.status not in (429, 503):
                            raise RuntimeError(f"POST /v1/jobs answered {resp.status}: {(await resp.text())[:300]}")
                    await asyncio.sleep(0.05 * (attempt + 1))
                else:
                    issued -= 1  # gave up on this one; the bulk path makes up the count

        await asyncio.gather(*(runner() for _ in range(concurrency)))
    return accepted, time.monotonic() - t0, errors


def submit_b(base: str, api_key: str, image: bytes, b: BJob, wait_s: int) -> None:
    """One B job: POST with ``Prefer: wait`` and (bounded) GETs until it is terminal."""
    try:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {api_key}"},
                          timeout=httpx.Timeout(wait_s + 15.0, connect=5.0)) as http:
            b.sent = time.time()
            resp = http.post("/v1/jobs", files={"image": ("scan.png", image, "image/png")},
                             data={"prompts": PROMPT}, headers={"Prefer": f"wait={wait_s}"})
            if resp.status_code != 202:
                b.error = f"POST answered {resp.status_code}: {resp.text[:200]}"
                return
            job = resp.json()
            b.job_id = job["id"]
            for _ in range(3):
                if job["status"] not in ("queued", "running"):
                    break
                job = http.get(resp.headers["Location"], headers={"Prefer": f"wait={wait_s}"}).json()
            b.received = time.time()
            b.status = job["status"]
    except Exception as exc:  # recorded and reported; the run goes on
        b.error = f"{type(exc).__name__}: {exc}"


def run_b_jobs(base: str, api_key: str, image: bytes, count: int, gap_s: float, wait_s: int) -> list[BJob]:
    bjobs = [BJob(index=i + 1, sent=0.0) for i in range(count)]
    threads = []
    t0 = time.monotonic()
    for i, b in enumerate(bjobs):
        delay = t0 + i * gap_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        thread = threading.Thread(target=submit_b, args=(base, api_key, image, b, wait_s), daemon=True)
        thread.start()
        threads.append(thread)
    deadline = time.monotonic() + B_TIMEOUT_S
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    for b in bjobs:
        if b.status is None and b.error is None:
            b.error = f"no terminal answer within {B_TIMEOUT_S:g} s"
    return bjobs


def wait_busy(conninfo: str, tenant: uuid.UUID, workers: list[subprocess.Popen[bytes]], label: str) -> float:
    """Wait until WARM_COMPLETED of ``tenant``'s jobs finished, then WARM_S more; returns seconds waited."""
    t0 = time.monotonic()
    deadline = t0 + WARM_TIMEOUT_S
    while True:
        for w in workers:
            if w.poll() is not None:
                raise RuntimeError(f"a worker exited with {w.returncode} during {label} warm-up")
        counts = status_counts(conninfo, tenant)
        if counts.get("succeeded", 0) + counts.get("failed", 0) >= WARM_COMPLETED:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{label}: workers did not finish {WARM_COMPLETED} jobs in {WARM_TIMEOUT_S:g} s"
                               f" (counts {counts})")
        time.sleep(POLL_S)
    time.sleep(WARM_S)
    return time.monotonic() - t0


# --- the phases -------------------------------------------------------------------------------

@dataclass
class PhaseResult:
    name: str
    bjobs: list[BJob]
    rate_start: float  # A's starts/s over the B window
    rate_done: float
    #: A's starts/s from PRE_B_S before the first B job to the last B start (the drain B waited on)
    rate_drain: float
    window_s: float
    a_counts_after: dict[str, int]
    failed_a: int


def measure(conninfo: str, tenant_a: uuid.UUID, bjobs: list[BJob], name: str) -> PhaseResult:
    fill_from_db(conninfo, bjobs, tenant_a)
    # A's throughput over the window the B jobs spent in the system (at least 5 s, ending at the last
    # B completion or now): the rate a FIFO queue would have drained A's jobs ahead of B at.
    sent = [b.sent for b in bjobs if b.sent]
    ends = [b.completed or b.received or time.time() for b in bjobs if b.sent]
    t0 = min(sent) - 2.0
    t1 = max(max(ends), t0 + 5.0)
    t1 = min(t1, time.time())
    r_start, r_done, _, _ = start_rate(conninfo, tenant_a, t0, t1)
    last_start = max([b.started for b in bjobs if b.started] or [time.time()])
    r_drain = start_rate(conninfo, tenant_a, min(sent) - PRE_B_S, max(last_start, min(sent) + 1.0))[0]
    counts = status_counts(conninfo, tenant_a)
    return PhaseResult(name, bjobs, r_start, r_done, r_drain, t1 - t0, counts, counts.get("failed", 0))


def print_phase(res: PhaseResult, fifo_rate: float | None = None) -> None:
    rate = fifo_rate if fifo_rate is not None else res.rate_start
    print(f"  {'B#':>3} {'queue wait':>11} {'to done':>9} {'endpoint':>9} {'wall POST':>10} {'A ahead':>8}"
          f" {'A backlog':>10} {'FIFO-eq':>9} {'status':>10}")
    print(f"  {'':>3} {'(s)':>11} {'(s)':>9} {'(s)':>9} {'(s)':>10} {'@submit':>8} {'@B start':>10} {'wait (s)':>9}")
    for b in res.bjobs:
        if b.created is None:
            print(f"  {b.index:>3} {'-':>11} {'-':>9} {'-':>9} {'-':>10} {'-':>8} {'-':>10} {'-':>9}"
                  f" {b.error or b.status}")
            continue
        qw = f"{b.started - b.created:11.3f}" if b.started else f"{'-':>11}"
        td = f"{b.completed - b.created:9.3f}" if b.completed else f"{'-':>9}"
        wall = f"{b.received - b.sent:10.3f}" if b.received else f"{'-':>10}"
        fifo = b.ahead_at_submit / rate if rate > 0 else float("nan")
        print(f"  {b.index:>3} {qw} {td} {b.endpoint_s:9.3f} {wall} {b.ahead_at_submit:>8}"
              f" {b.backlog_at_start:>10} {fifo:9.2f} {(b.status or '-'):>10}" + (f"  ({b.error})" if b.error else ""))
    print(f"  A over the B window ({res.window_s:.1f} s): {res.rate_start:.1f} jobs started/s,"
          f" {res.rate_done:.1f} succeeded/s ({res.rate_drain:.1f} started/s from {PRE_B_S:g} s before B1 to the"
          " last B start);"
          f" FIFO-eq column = ahead / {rate:.1f}; A now {dict(sorted(res.a_counts_after.items()))}")


def wait_published(namespace: str, conninfo: str, tenant: uuid.UUID, backlog: int) -> float:
    """FIFO phase: wait until the dispatcher's one big round has pushed all ``backlog`` messages.

    The round stamps ``dispatched_at`` and releases its lock before it publishes, and publishing a
    few hundred messages takes seconds on a loaded box; a B job dispatched meanwhile by the other
    worker's dispatcher would land in the middle of A's messages and not measure a FIFO. Every A
    message is in the broker list, in the unacked hash (reserved or running) or acked (its job ended).
    """
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5)
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < WARM_TIMEOUT_S:
            counts = status_counts(conninfo, tenant)
            ended = counts.get("succeeded", 0) + counts.get("failed", 0)
            placed = int(client.llen(f"{namespace}:segmentation")) + int(client.hlen(f"{namespace}:unacked"))
            if placed + ended >= backlog:
                return time.monotonic() - t0
            time.sleep(0.1)
    finally:
        client.close()
    raise RuntimeError(f"fifo: the dispatcher did not publish {backlog} jobs in {WARM_TIMEOUT_S:g} s")


@dataclass
class Env:
    """What every service process of the run shares."""

    db_url: str
    conninfo: str
    data_dir: Path
    emulator_url: str
    emulator_key: str

    def service(self, namespace: str, port: int, **extra: str) -> dict[str, str]:
        return child_env(
            MEDPARSE_DATA_DIR=str(self.data_dir.resolve()),
            MEDPARSE_DATABASE_URL=self.db_url,
            MEDPARSE_REDIS_URL=REDIS_URL,
            MEDPARSE_REDIS_NAMESPACE=namespace,
            MEDPARSE_ENDPOINT_SCORING_URI=f"{self.emulator_url}/score",
            MEDPARSE_ENDPOINT_KEY=self.emulator_key,
            MEDPARSE_PORT=str(port),
            MEDPARSE_LOG_LEVEL="WARNING",
            MEDPARSE_TENANT_RATE_LIMIT_RPS="100000",
            MEDPARSE_TENANT_RATE_LIMIT_BURST="100000",
            MEDPARSE_TENANT_MAX_QUEUED_JOBS="100000",
            **extra,
        )


def start_gateway(procs: Procs, env: dict[str, str], log: str) -> str:
    gateway = procs.start(["serve"], env, log)
    base = f"http://127.0.0.1:{env['MEDPARSE_PORT']}"
    wait_http(f"{base}/healthz", seconds=STARTUP_TIMEOUT_S, proc=gateway)
    return base


def fair_phase(args: argparse.Namespace, procs: Procs, envs: Env, namespace: str, tenants: dict[str, Any],
               image: bytes, body: bytes, ctype: str) -> tuple[PhaseResult, str, int]:
    tenant_a, key_a = tenants["a"]
    _, key_b = tenants["b"]
    mark = procs.mark()
    env = envs.service(namespace, free_port())
    base = start_gateway(procs, env, "gateway.log")
    print(f"fair phase: A backlog {args.backlog} jobs ({len(image)} B PNG, prompt {PROMPT!r}), "
          f"emulator {args.latency_ms:g} ms x 8 concurrent, 2 workers x {args.concurrency} threads, "
          f"window {args.window}, tenant running cap {args.cap}", flush=True)
    via_api, api_s = 0, 0.0
    api_errors: dict[int, int] = {}
    if args.submit == "api":
        via_api, api_s, api_errors = asyncio.run(_submit_api(
            base, key_a, body, ctype, args.backlog, args.submit_concurrency, args.api_budget_s))
    via_bulk = args.backlog - via_api
    t_bulk = time.monotonic()
    if via_bulk:
        bulk_insert(envs.conninfo, tenant_a, image, via_bulk)
    bulk_s = time.monotonic() - t_bulk
    note = (f"{via_api} via POST /v1/jobs in {api_s:.1f} s"
            f" ({via_api / api_s if api_s else 0:.0f}/s, {args.submit_concurrency} connections)")
    if api_errors:
        note += f", non-202 answers retried: {api_errors}"
    if via_bulk:
        note += f"; {via_bulk} BULK-INSERTED into Postgres (jobs + job_inputs, same PNG) in {bulk_s:.1f} s"
    print(f"  A backlog: {note}", flush=True)
    queued = status_counts(envs.conninfo, tenant_a).get("queued", 0)
    if queued != args.backlog:
        raise RuntimeError(f"expected {args.backlog} queued A jobs, found {queued}")

    worker_env = {**env, "MEDPARSE_DISPATCH_WINDOW": str(args.window),
                  "MEDPARSE_TENANT_MAX_RUNNING_JOBS": str(args.cap)}
    workers = [procs.start(["worker", "--concurrency", str(args.concurrency)], worker_env, f"worker{i}.log")
               for i in range(2)]
    warm = wait_busy(envs.conninfo, tenant_a, workers, "fair")
    print(f"  workers busy with A after {warm:.1f} s; A: {status_counts(envs.conninfo, tenant_a)}", flush=True)
    bjobs = run_b_jobs(base, key_b, image, args.b_jobs, args.b_gap_s, 60)
    result = measure(envs.conninfo, tenant_a, bjobs, "fair")
    procs.stop_since(mark)  # gateway and workers; the emulator stays
    return result, note, via_bulk


def fifo_phase(args: argparse.Namespace, procs: Procs, envs: Env, tenants: dict[str, Any],
               image: bytes, body: bytes, ctype: str) -> PhaseResult:
    """Same service, one FIFO broker queue; own Redis namespace so no message of the fair phase is left."""
    canceled = cancel_unfinished(envs.conninfo)
    tenant_a, key_a = tenants["a2"]
    _, key_b = tenants["b2"]
    mark = procs.mark()
    with throwaway_namespace("mpfair") as namespace:
        try:
            env = envs.service(namespace, free_port(),
                               MEDPARSE_DISPATCH_WINDOW="100000", MEDPARSE_TENANT_MAX_RUNNING_JOBS="100000")
            base = start_gateway(procs, env, "fifo-gateway.log")
            n_api, s_api, _ = asyncio.run(_submit_api(
                base, key_a, body, ctype, args.fifo_backlog, args.submit_concurrency, 30.0))
            if n_api < args.fifo_backlog:
                bulk_insert(envs.conninfo, tenant_a, image, args.fifo_backlog - n_api)
            print(f"fifo phase: {canceled} unfinished fair-phase jobs canceled; A' backlog {args.fifo_backlog}"
                  f" ({n_api} via API in {s_api:.1f} s); gateway + workers restarted (new Redis namespace) with"
                  " window 100000 and running cap 100000 (one FIFO broker queue)", flush=True)
            workers = [procs.start(["worker", "--concurrency", str(args.concurrency)], env, f"fifo-worker{i}.log")
                       for i in range(2)]
            warm = wait_busy(envs.conninfo, tenant_a, workers, "fifo")
            published = wait_published(namespace, envs.conninfo, tenant_a, args.fifo_backlog)
            print(f"  workers busy after {warm:.1f} s (+{published:.1f} s until all published);"
                  f" A': {status_counts(envs.conninfo, tenant_a)}", flush=True)
            bjobs = run_b_jobs(base, key_b, image, args.fifo_b_jobs, args.fifo_b_gap_s, 60)
            return measure(envs.conninfo, tenant_a, bjobs, "fifo")
        finally:
            procs.stop_since(mark)  # before the namespace's keys are deleted


def run(args: argparse.Namespace) -> int:
    from runtime.cli import create_tenant
    from runtime.migrate import upgrade

    image = ct_slice_png()
    body, ctype = multipart_body(image, PROMPT)
    emulator_key = secrets.token_urlsafe(16)
    tmp = Path(tempfile.mkdtemp(prefix="medparse-fairness-"))
    procs = Procs(tmp)
    failed = True
    t_run = time.monotonic()
    load0 = os.getloadavg()
    try:
        with throwaway_database("medparse_fair") as database, throwaway_namespace("mpfair") as namespace:
            db_url, conninfo = database.async_url, database.conninfo
            try:
                settings = Settings(database_url=db_url, redis_url=REDIS_URL, redis_namespace=namespace,
                                    data_dir=tmp / "var", log_level="WARNING")
                upgrade(settings)
                tenants = {name: create_tenant(settings, f"bench-{name}") for name in ("a", "b", "a2", "b2")}
                emu_port = free_port()
                emulator = procs.start(
                    ["emulator", "--port", str(emu_port), "--latency-ms", f"{args.latency_ms:g}",
                     "--max-concurrent", "8", "--rate-limit-rps", "0"],
                    child_env(MEDPARSE_EMULATOR_KEY=emulator_key, MEDPARSE_LOG_LEVEL="WARNING"), "emulator.log",
                )
                envs = Env(db_url, conninfo, settings.data_dir, f"http://127.0.0.1:{emu_port}", emulator_key)
                wait_http(f"{envs.emulator_url}/", seconds=STARTUP_TIMEOUT_S, proc=emulator)
                fair, note, via_bulk = fair_phase(args, procs, envs, namespace, tenants, image, body, ctype)
                fifo = None
                if not args.no_fifo:
                    fifo = fifo_phase(args, procs, envs, tenants, image, body, ctype)
            finally:
                procs.stop_all()  # before the database is dropped and the namespace's keys deleted
        report(args, note, via_bulk, fair, fifo)
        failed = False
        load1 = os.getloadavg()
        print(f"(run took {time.monotonic() - t_run:.0f} s; 1-min load average {load0[0]:.1f} at the start,"
              f" {load1[0]:.1f} at the end, on {os.cpu_count()} cores: the box is shared, so A's throughput"
              " is whatever CPU is left)")
        return 0 if passed(args, fair) else 1
    finally:
        procs.stop_all()
        if failed or args.logs:
            for log in sorted(tmp.glob("*.log")):
                text = log.read_text(errors="replace").strip()
                if text:
                    print(f"--- {log.name} (last lines) ---\n" + "\n".join(text.splitlines()[-20:]), file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


def waits(res: PhaseResult) -> list[float]:
    return [b.started - b.created for b in res.bjobs if b.started is not None and b.created is not None]


def passed(args: argparse.Namespace, fair: PhaseResult) -> bool:
    w = waits(fair)
    backlogs = [b.backlog_at_start for b in fair.bjobs]
    return (len(w) == args.b_jobs and all(b.status == "succeeded" for b in fair.bjobs)
            and max(w) <= args.max_wait_s and min(backlogs) >= args.min_backlog)


def _row(label: str, values: list[float], digits: int = 3) -> str:
    top = max(values) if values else float("nan")
    return f"{label:<52} {pct(values, 50):9.{digits}f} {top:9.{digits}f}"


def report(
    args: argparse.Namespace, submit_note: str, via_bulk: int, fair: PhaseResult, fifo: PhaseResult | None
) -> None:
    print()
    print("=" * 100)
    print(f"tenant B's wait vs tenant A's backlog  (A backlog {args.backlog}: {submit_note})")
    print("fair phase (product defaults: dispatch window 16, tenant running cap 16):")
    print_phase(fair)
    if fifo is not None:
        print(f"fifo phase (validation: window 100000, cap 100000, A' backlog {args.fifo_backlog}):")
        print_phase(fifo, fifo.rate_drain)
    print()
    w = waits(fair)
    fifo_eq = [b.ahead_at_submit / fair.rate_start for b in fair.bjobs if b.created and fair.rate_start > 0]
    backlogs = [float(b.backlog_at_start) for b in fair.bjobs if b.started]
    total = [b.completed - b.created for b in fair.bjobs if b.completed and b.created]
    wall = [b.received - b.sent for b in fair.bjobs if b.received]
    print(f"{'':<52} {'p50':>9} {'max':>9}")
    print(_row("B queue wait, fair (created -> started), s", w))
    print(_row("B created -> succeeded, fair, s", total))
    print(_row("B wall clock POST (Prefer: wait=60) -> 202, s", wall))
    print(_row("B FIFO-equivalent wait (A ahead / A start rate), s", fifo_eq, 1))
    ratio = pct(fifo_eq, 50) / pct(w, 50) if w and pct(w, 50) > 0 else float("nan")
    print(f"{'ratio FIFO-equivalent / fair wait (p50)':<52} {ratio:9.0f}x")
    print(f"{'A backlog B overtook (A not started at B start)':<52} {pct(backlogs, 50):9.0f}"
          f" {'min ' + str(int(min(backlogs, default=0))):>9}")
    print(f"A throughput during the B window: {fair.rate_start:.1f} jobs/s started, {fair.rate_done:.1f} succeeded/s"
          f" (A failed so far: {fair.failed_a})")
    if fifo is not None:
        fw = waits(fifo)
        overtaken = sum(b.backlog_at_start for b in fifo.bjobs)
        print(f"FIFO validation (a real FIFO queue, A' backlog {args.fifo_backlog}): measured B queue wait"
              f" p50 {pct(fw, 50):.2f} s, max {max(fw, default=float('nan')):.2f} s; A' jobs ahead still unstarted"
              f" when B started: {overtaken} (0 = B waited for every job ahead of it)")
        for label, rate in (("A' drain rate during B's wait", fifo.rate_drain),
                            ("the fair phase's A rate", fair.rate_start)):
            est = [b.ahead_at_submit / rate for b in fifo.bjobs if b.created and rate > 0]
            ratio_v = pct(fw, 50) / pct(est, 50) if fw and est and pct(est, 50) > 0 else float("nan")
            print(f"  estimate ahead / {label} ({rate:.1f}/s): p50 {pct(est, 50):.2f} s,"
                  f" max {max(est, default=float('nan')):.2f} s -> measured/estimate {ratio_v:.2f}")
    if via_bulk:
        print(f"NOTE: {via_bulk} of A's jobs were bulk-inserted into Postgres, not submitted through the API.")
    ok = passed(args, fair)
    print(f"target: every B queue wait <= {args.max_wait_s:g} s while A's backlog at B's start >= {args.min_backlog}"
          f" -> max wait {max(w, default=float('nan')):.3f} s, min backlog {int(min(backlogs, default=0))}")
    print(f"RESULT: {'PASS' if ok else 'FAIL'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backlog", type=int, default=5000, help="tenant A's queued jobs (default 5000)")
    parser.add_argument("--submit", choices=["api", "bulk"], default="api",
                        help="api: POST /v1/jobs (bulk insert for what the budget leaves); bulk: all into Postgres")
    parser.add_argument("--api-budget-s", type=float, default=45.0, help="time allowed for the API path")
    parser.add_argument("--submit-concurrency", type=int, default=32)
    parser.add_argument("--b-jobs", type=int, default=5)
    parser.add_argument("--b-gap-s", type=float, default=2.0)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--concurrency", type=int, default=8, help="threads per worker (2 workers)")
    defaults = Settings.model_fields
    parser.add_argument("--window", type=int, default=defaults["dispatch_window"].default,
                        help="MEDPARSE_DISPATCH_WINDOW in the fair phase (default: the product's)")
    parser.add_argument("--cap", type=int, default=defaults["tenant_max_running_jobs"].default,
                        help="MEDPARSE_TENANT_MAX_RUNNING_JOBS in the fair phase (default: the product's)")
    parser.add_argument("--no-fifo", action="store_true", help="skip the FIFO validation phase")
    parser.add_argument("--fifo-backlog", type=int, default=300)
    parser.add_argument("--fifo-b-jobs", type=int, default=3)
    parser.add_argument("--fifo-b-gap-s", type=float, default=1.0)
    parser.add_argument("--max-wait-s", type=float, default=2.0)
    parser.add_argument("--min-backlog", type=int, default=4000)
    parser.add_argument("--logs", action="store_true", help="print the tail of the child logs at the end")
    args = parser.parse_args()
    if args.backlog < 1 or args.b_jobs < 1 or args.fifo_backlog < 1 or args.fifo_b_jobs < 1:
        parser.error("counts must be >= 1")
    sys.exit(run(args))


if __name__ == "__main__":
    main()
