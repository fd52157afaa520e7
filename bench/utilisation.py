"""Endpoint utilisation: do several worker processes keep an emulated deployment's capacity busy?

Run with ``.venv/bin/python -m bench.utilisation`` (about 1-2 minutes; ``--help`` for knobs).

What it does, all on 127.0.0.1:
- creates a throwaway database ``medparse_bench_<random>`` (migrated; dropped at the end, also on
  failure), a tenant and an API key, and picks a random Redis namespace whose keys are deleted at the end;
- starts the endpoint emulator (``--max-concurrent 8 --instances 1 --latency-ms 500``: 8 requests on
  the "GPU" at once, up to 16 pending, 429 beyond) and the gateway, as subprocesses;
- phase ``capped``: submits a backlog of ``--jobs`` small jobs (256x256 gray PNG, 2 prompts) through
  ``POST /v1/jobs`` with no worker running, then starts ``--workers`` ``medparse worker`` processes
  (``--concurrency`` threads each) with the real global cap (8 x 1) and lets them drain the backlog;
- phase ``uncapped`` (the baseline, same run): the same with a smaller backlog and
  ``MEDPARSE_ENDPOINT_MAX_CONCURRENT_PER_INSTANCE=64``, so the workers send as many requests as they have
  threads and the deployment answers 429 to the excess;
- measures, per phase, the completion rate over the steady-state window (from the jobs' ``completed_at``
  in Postgres, the first ``HEAD_S`` and last ``TAIL_S`` seconds of completions left out), the emulator's
  ``/_emulator/stats`` (status counts, max in flight), its model occupancy sampled every
  ``SAMPLE_S`` (``on_gpu`` / capacity), HTTP attempts per job (retries), and CPU use of the machine and of
  each process, so a miss can be traced to CPU saturation or to slot hand-off.

Target (capped phase): completion rate >= 0.95 x capacity / latency (8 / 0.5 s = 16 jobs/s), zero 429s,
every job succeeded.

The whole stack needs about one core at 16 jobs/s (workers ~45 ms CPU per job, the emulator ~15 ms).
The box has two and is shared: with autogroup scheduling every other session's busy command gets the same
CPU share as this whole benchmark, whatever the nice values. So the benchmark waits (``--wait-quiet``)
for a quiet machine before each phase, runs the emulator at a higher priority than our processes (it
stands for a remote GPU box, ``--emulator-nice``), prints the CPU that processes outside it used
("other") and warns when that was significant: a FAIL next to that warning says little about our code.
``--headroom N`` adds a phase with a global cap of N (> 8) against the same capacity-8 emulator.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

from tests.support.factories import ct_slice_png
from tests.support.ports import free_port
from tests.support.processes import stop, wait_http
from tests.support.throwaway import (
    REDIS_URL,
    ThrowawayDatabase,
    throwaway_database,
    throwaway_namespace,
)

REPO = Path(__file__).resolve().parent.parent

PROMPTS = "liver & kidney"
CAPACITY = 8
LATENCY_MS = 500.0
TARGET_RATIO = 0.95
#: Steady-state window: completions in the first HEAD_S and last TAIL_S seconds are left out.
HEAD_S, TAIL_S = 3.0, 2.0
SAMPLE_S = 0.25
#: Before a phase, wait for the machine to be less busy than this (other users' load), see --wait-quiet.
QUIET_BUSY = 0.15
#: Other processes using more than this many cores during a phase make its figures doubtful.
OTHER_LOAD_WARN = 0.25
#: A phase gives up when no job has finished for this long.
STALL_S = 20.0
START_TIMEOUT_S = 30.0
TERMINAL = ("succeeded", "failed", "canceled")
TICK = os.sysconf("SC_CLK_TCK")


# --- processes ------------------------------------------------------------------------------------

def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDPARSE_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def start(args: list[str], env: dict[str, str], log: Path, nice: int = 0) -> subprocess.Popen[bytes]:
    """``python -m runtime.cli ARGS``; a non-zero ``nice`` runs it under ``nice -n`` (all its threads)."""
    prefix = ["nice", "-n", str(nice)] if nice else []
    handle = log.open("ab")
    try:
        return subprocess.Popen(
            [*prefix, sys.executable, "-m", "runtime.cli", *args], env=env, cwd=REPO,
            stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    finally:
        handle.close()


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def pids_named(name: str, cmdline_has: str = "") -> list[int]:
    """Processes whose comm is ``name`` (and whose command line contains ``cmdline_has``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.joinpath("comm").read_text().strip() != name:
                    continue
                if cmdline_has and cmdline_has not in entry.joinpath("cmdline").read_text(errors="replace"):
                    continue
                pids.append(int(entry.name))
    return pids


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all cores, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


def wait_for_quiet(max_s: float, busy_below: float = QUIET_BUSY, probe_s: float = 1.0) -> tuple[float, float]:
    """Wait (at most ``max_s``) for a second in which the machine is less than ``busy_below`` busy.

    The box is shared: other users' tests would take the CPU this benchmark needs. Returns the time
    waited and the last busy fraction seen.
    """
    started = time.monotonic()
    busy = 1.0
    while True:
        b0, t0 = machine_ticks()
        time.sleep(probe_s)
        b1, t1 = machine_ticks()
        busy = (b1 - b0) / max(1, t1 - t0)
        if busy < busy_below or time.monotonic() - started >= max_s:
            return time.monotonic() - started, busy


# --- the job --------------------------------------------------------------------------------------

def submit_backlog(base: str, api_keys: list[str], count: int, deadline_s: float = 60.0) -> list[str]:
    """``count`` jobs through ``POST /v1/jobs``, round-robin over the tenants' keys; returns the job ids."""
    images = [ct_slice_png(256, seed) for seed in range(8)]
    deadline = time.monotonic() + deadline_s
    with httpx.Client(base_url=base, timeout=30.0, limits=httpx.Limits(max_connections=8)) as http:
        def one(index: int) -> str:
            if time.monotonic() > deadline:
                raise RuntimeError("submitting the backlog took too long")
            resp = http.post("/v1/jobs", files={"image": ("scan.png", images[index % len(images)], "image/png")},
                             data={"prompts": PROMPTS},
                             headers={"Authorization": f"Bearer {api_keys[index % len(api_keys)]}"})
            if resp.status_code != 202:
                raise RuntimeError(f"submit answered {resp.status_code}: {resp.text[:300]}")
            return str(resp.json()["id"])

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, range(count)))


# --- one phase ------------------------------------------------------------------------------------

@dataclass
class Phase:
    name: str
    jobs: int
    per_instance: int
    submit_s: float = 0.0
    drained: bool = False
    wall_s: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    rate: float = 0.0
    window: tuple[float, float] = (0.0, 0.0)
    window_jobs: int = 0
    overall_rate: float = 0.0
    retries: int = 0
    attempts_max: int = 0
    job_s_median: float = 0.0
    endpoint_s_median: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)
    gpu_mean: float = 0.0
    in_flight_mean: float = 0.0
    holders_mean: float = 0.0
    idle_wait_s: float = 0.0
    #: the global cap the workers compute from their settings (Settings.endpoint_max_in_flight)
    limit: int = 0
    idle_busy: float = 0.0
    machine_cpu: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def count_429(self) -> int:
        return int(self.stats.get("status_counts", {}).get("429", 0))


@dataclass
class Sample:
    t: float
    on_gpu: int
    in_flight: int
    holders: int
    busy: int
    total: int
    proc_ticks: dict[str, dict[int, int]]


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, database: ThrowawayDatabase, namespace: str) -> None:
        self.args = args
        self.tmp = tmp
        self.database = database
        self.db_name = database.name
        self.namespace = namespace
        self.db_url = database.async_url
        self.emulator_key = secrets.token_urlsafe(16)
        self.emulator_url = ""
        self.gateway_url = ""
        self.api_keys: list[str] = []
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    # setup / teardown
    def service_env(self, **extra: str) -> dict[str, str]:
        return base_env(
            MEDPARSE_DATA_DIR=str(self.tmp / "var"),
            MEDPARSE_DATABASE_URL=self.db_url,
            MEDPARSE_REDIS_URL=REDIS_URL,
            MEDPARSE_REDIS_NAMESPACE=self.namespace,
            MEDPARSE_ENDPOINT_SCORING_URI=f"{self.emulator_url}/score",
            MEDPARSE_ENDPOINT_KEY=self.emulator_key,
            MEDPARSE_LOG_LEVEL="WARNING",
            **extra,
        )

    def setup(self) -> None:
        from medparse.settings import Settings
        from runtime.cli import create_tenant
        from runtime.migrate import upgrade

        settings = Settings(database_url=self.db_url, redis_url=REDIS_URL, redis_namespace=self.namespace,
                            data_dir=self.tmp / "var")
        upgrade(settings)
        self.api_keys = [create_tenant(settings, f"bench-{uuid.uuid4().hex[:8]}")[1]
                         for _ in range(self.args.tenants)]

        port = free_port()
        self.procs["emulator"] = start(
            ["emulator", "--port", str(port), "--latency-ms", f"{LATENCY_MS:g}",
             "--max-concurrent", str(CAPACITY), "--instances", "1"],
            base_env(MEDPARSE_EMULATOR_KEY=self.emulator_key), self.tmp / "emulator.log",
            nice=self.args.emulator_nice,
        )
        self.emulator_url = f"http://127.0.0.1:{port}"
        wait_http(f"{self.emulator_url}/", seconds=START_TIMEOUT_S, proc=self.procs["emulator"])

        port = free_port()
        self.procs["gateway"] = start(["serve"], self.service_env(MEDPARSE_PORT=str(port)), self.tmp / "gateway.log",
                                      nice=self.args.nice)
        self.gateway_url = f"http://127.0.0.1:{port}"
        wait_http(f"{self.gateway_url}/healthz", seconds=START_TIMEOUT_S, proc=self.procs["gateway"])

    def teardown(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(Exception):
                stop(proc)

    # emulator admin
    def emulator(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        resp = httpx.request(method, f"{self.emulator_url}{path}", timeout=5.0,
                             headers={"Authorization": f"Bearer {self.emulator_key}"}, **kwargs)
        resp.raise_for_status()
        return dict(resp.json())

    # one phase
    def run_phase(self, phase: Phase, max_s: float) -> Phase:
        phase.idle_wait_s, phase.idle_busy = wait_for_quiet(self.args.wait_quiet)
        self.emulator("POST", "/_emulator/config", json={"reset_stats": True})
        t = time.monotonic()
        ids = submit_backlog(self.gateway_url, self.api_keys, phase.jobs)
        phase.submit_s = time.monotonic() - t

        env = self.service_env(
            MEDPARSE_ENDPOINT_MAX_CONCURRENT_PER_INSTANCE=str(phase.per_instance),
            MEDPARSE_ENDPOINT_INSTANCE_COUNT="1",
        )
        from medparse.settings import Settings

        phase.limit = Settings(endpoint_max_concurrent_per_instance=phase.per_instance,
                               endpoint_instance_count=1).endpoint_max_in_flight
        workers = []
        for i in range(self.args.workers):
            name = f"{phase.name}-worker{i}"
            proc = start(["worker", "--concurrency", str(self.args.concurrency)], env, self.tmp / f"{name}.log",
                         nice=self.args.nice)
            self.procs[name] = proc
            workers.append((name, proc))
        watched = {"emulator": [self.procs["emulator"].pid], "gateway": [self.procs["gateway"].pid],
                   "workers": [proc.pid for _, proc in workers], "bench": [os.getpid()]}
        holders_key = f"{self.namespace}:endpoint:in_flight"
        rclient = redis.Redis.from_url(REDIS_URL)

        scanned: dict[str, Any] = {"at": 0.0}

        def process_ticks() -> dict[str, dict[int, int]]:
            if time.monotonic() - scanned["at"] >= 1.0:  # scanning /proc costs CPU; once a second is plenty
                # Only this run's database backends, not other users' of the shared server.
                scanned.update(at=time.monotonic(), postgres=pids_named("postgres", self.db_name),
                               redis=pids_named("redis-server"))
            groups = {name: {pid: cpu_ticks(pid) for pid in pids} for name, pids in watched.items()}
            for name in ("postgres", "redis"):
                groups[name] = {pid: cpu_ticks(pid) for pid in scanned[name]}
            return groups

        samples: list[Sample] = []
        started = time.monotonic()
        deadline = started + max_s
        progress_at, last_done = started, -1
        try:
            with psycopg.connect(self.sync_conninfo(), autocommit=True) as conn:
                while time.monotonic() < deadline:
                    stats = self.emulator("GET", "/_emulator/stats")
                    holders = int(rclient.zcard(holders_key))
                    busy, total = machine_ticks()
                    samples.append(Sample(time.time(), int(stats["on_gpu"]), int(stats["in_flight"]), holders,
                                          busy, total, process_ticks()))
                    row = conn.execute(
                        "SELECT count(*) FROM jobs WHERE id = ANY(%s) AND status = ANY(%s)",
                        (ids, list(TERMINAL)),
                    ).fetchone()
                    done = int(row[0]) if row else 0
                    if done >= len(ids):
                        phase.drained = True
                        break
                    now = time.monotonic()
                    if done != last_done:
                        progress_at, last_done = now, done
                    elif now - progress_at > STALL_S:
                        print(f"{phase.name}: no job finished for {STALL_S:.0f} s ({done}/{len(ids)} done); "
                              f"giving up on this phase", flush=True)
                        break
                    if any(proc.poll() is not None for _, proc in workers):
                        raise RuntimeError(f"a worker exited early; see logs in {self.tmp}")
                    time.sleep(SAMPLE_S)
                phase.wall_s = time.monotonic() - started
                rows = conn.execute(
                    "SELECT status, extract(epoch FROM started_at), extract(epoch FROM completed_at), attempts,"
                    " result_meta, error_code FROM jobs WHERE id = ANY(%s)",
                    (ids,),
                ).fetchall()
        finally:
            rclient.close()
        phase.stats = self.emulator("GET", "/_emulator/stats")
        phase.stats.pop("client_request_ids", None)
        for name, proc in workers:
            stop(proc)
            del self.procs[name]
        self.analyse(phase, rows, samples)
        return phase

    def sync_conninfo(self) -> str:
        return self.database.conninfo

    @staticmethod
    def analyse(phase: Phase, rows: list[tuple[Any, ...]], samples: list[Sample]) -> None:
        statuses: dict[str, int] = {}
        errors: dict[str, int] = {}
        done: list[float] = []
        job_s: list[float] = []
        endpoint_s: list[float] = []
        for status, started_at, completed_at, _attempts, meta, error_code in rows:
            statuses[status] = statuses.get(status, 0) + 1
            if error_code:
                errors[error_code] = errors.get(error_code, 0) + 1
            if status == "succeeded" and completed_at is not None:
                done.append(float(completed_at))
                if started_at is not None:
                    job_s.append(float(completed_at) - float(started_at))
            if meta:
                http_attempts = int(meta.get("endpoint_http_attempts") or 1)
                phase.retries += http_attempts - 1
                phase.attempts_max = max(phase.attempts_max, http_attempts)
                if meta.get("endpoint_seconds") is not None:
                    endpoint_s.append(float(meta["endpoint_seconds"]))
        phase.statuses, phase.errors = statuses, errors
        phase.job_s_median = statistics.median(job_s) if job_s else 0.0
        phase.endpoint_s_median = statistics.median(endpoint_s) if endpoint_s else 0.0
        done.sort()
        if len(done) < 3:
            return
        phase.overall_rate = (len(done) - 1) / max(1e-9, done[-1] - done[0])
        lo, hi = done[0] + HEAD_S, done[-1] - TAIL_S
        inside = [t for t in done if lo <= t <= hi]
        if hi - lo < 3.0 or len(inside) < 10:
            # Too short for fixed margins: fall back to the middle 60 % of completions.
            inside = done[len(done) // 5: len(done) * 4 // 5]
        phase.window = (inside[0] - done[0], inside[-1] - done[0])
        phase.window_jobs = len(inside)
        phase.rate = (len(inside) - 1) / max(1e-9, inside[-1] - inside[0])
        in_window = [s for s in samples if inside[0] <= s.t <= inside[-1]]
        if len(in_window) >= 2:
            phase.gpu_mean = statistics.mean(s.on_gpu for s in in_window) / CAPACITY
            phase.in_flight_mean = statistics.mean(s.in_flight for s in in_window)
            phase.holders_mean = statistics.mean(s.holders for s in in_window)
            first, last = in_window[0], in_window[-1]
            cores = os.cpu_count() or 1
            phase.machine_cpu = (last.busy - first.busy) / max(1, last.total - first.total)
            seconds = max(1e-9, last.t - first.t)
            for name, now in last.proc_ticks.items():
                before = first.proc_ticks.get(name, {})
                used = sum(ticks - before.get(pid, 0) for pid, ticks in now.items())
                phase.cpu[name] = used / TICK / seconds
            phase.cpu["other"] = max(0.0, phase.machine_cpu * cores - sum(phase.cpu.values()))


# --- report ---------------------------------------------------------------------------------------

def report(phases: list[Phase], args: argparse.Namespace) -> bool:
    ideal = CAPACITY / (LATENCY_MS / 1000.0)
    print(f"emulator capacity {CAPACITY} x latency {LATENCY_MS:.0f} ms -> ideal {ideal:.1f} jobs/s; "
          f"{args.workers} worker processes x {args.concurrency} threads; {args.tenants} tenants; "
          f"{os.cpu_count()} cores; "
          f"nice: emulator {args.emulator_nice}, gateway and workers {args.nice}")
    print()
    head = (f"{'phase':9} {'cap':>4} {'limit':>5} {'jobs':>5} {'ok':>5} {'failed':>6} {'jobs/s':>7} {'ratio':>6} "
            f"{'overall/s':>9} {'429s':>5} {'retries':>7} {'max_in_flight':>13} {'gpu busy':>8} "
            f"{'cpu':>5} {'job s p50':>9} {'endpoint s p50':>14}")
    print(head)
    for p in phases:
        print(f"{p.name:9} {p.per_instance:>4} {p.limit:>5} {p.jobs:>5} {p.statuses.get('succeeded', 0):>5} "
              f"{p.statuses.get('failed', 0):>6} {p.rate:7.2f} {p.rate / ideal:6.3f} {p.overall_rate:9.2f} "
              f"{p.count_429:>5} {p.retries:>7} {p.stats.get('max_in_flight', 0):>13} {p.gpu_mean:8.1%} "
              f"{p.machine_cpu:5.0%} {p.job_s_median:9.2f} {p.endpoint_s_median:14.2f}")
    print()
    for p in phases:
        start, end = p.window
        print(f"{p.name}: machine {p.idle_busy:.0%} busy before the phase (waited {p.idle_wait_s:.0f} s); "
              f"submit {p.jobs} jobs {p.submit_s:.1f} s; drained={p.drained} in {p.wall_s:.1f} s; "
              f"steady window {start:.1f}-{end:.1f} s after first completion ({p.window_jobs} jobs); "
              f"emulator statuses {p.stats.get('status_counts')}, requests {p.stats.get('requests_total')}; "
              f"max http attempts/job {p.attempts_max}" + (f"; errors {p.errors}" if p.errors else ""))
        model_s = p.gpu_mean * CAPACITY / p.rate if p.rate else 0.0
        print(f"  mean over window: our slot holders {p.holders_mean:.2f}, emulator in flight {p.in_flight_mean:.2f}, "
              f"on the model {p.gpu_mean * CAPACITY:.2f} of {CAPACITY} (sampled: approximate); rate = occupancy "
              f"{p.gpu_mean:.1%} x {CAPACITY} / model time per request {model_s * 1000:.0f} ms "
              f"(configured {LATENCY_MS:.0f})")
        if p.cpu:
            print(f"  cpu over window, cores of {os.cpu_count()} (machine {p.machine_cpu:.0%} busy): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in p.cpu.items()))
    capped = phases[0]
    ok_rate = capped.rate / ideal >= TARGET_RATIO
    ok_429 = capped.count_429 == 0
    ok_jobs = capped.drained and capped.statuses.get("succeeded", 0) == capped.jobs
    print()
    print(f"capped: {capped.rate:.2f} jobs/s = {capped.rate / ideal:.3f} x {ideal:.0f}/s "
          f"(>= {TARGET_RATIO}): {'PASS' if ok_rate else 'FAIL'}; "
          f"429s {capped.count_429} (== 0): {'PASS' if ok_429 else 'FAIL'}; "
          f"succeeded {capped.statuses.get('succeeded', 0)}/{capped.jobs}: {'PASS' if ok_jobs else 'FAIL'}")
    for base in phases[1:]:
        print(f"{base.name} (cap {base.per_instance}, not judged): {base.rate:.2f} jobs/s "
              f"({base.rate / ideal:.3f}), 429s {base.count_429}, retries {base.retries}, "
              f"succeeded {base.statuses.get('succeeded', 0)}/{base.jobs}")
    verdict = ok_rate and ok_429 and ok_jobs
    other = capped.cpu.get("other", 0.0)
    if other > OTHER_LOAD_WARN:
        print(f"WARNING: processes outside this benchmark used {other:.2f} cores during the capped phase; "
              "the rate is then limited by the shared CPU too (run again on a quiet machine)")
    print(f"overall: {'PASS' if verdict else 'FAIL'}")
    return verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=400, help="backlog of the capped phase")
    parser.add_argument("--baseline-jobs", type=int, default=150, help="backlog of the uncapped phase (0 skips it)")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--tenants", type=int, default=4,
                        help="spread the backlog over this many tenants (each may run tenant_max_running_jobs at once)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--baseline-per-instance", type=int, default=64)
    parser.add_argument("--headroom", type=int, default=0,
                        help="also run the backlog with this global cap (> 8) against the same capacity-8 emulator")
    parser.add_argument("--max-phase-s", type=float, default=90.0, help="bound on one phase's drain")
    parser.add_argument("--wait-quiet", type=float, default=10.0,
                        help=f"before each phase wait up to this many s for the machine to be"
                             f" < {QUIET_BUSY * 100:.0f}%% busy")
    parser.add_argument("--emulator-nice", type=int, default=-10,
                        help="nice value of the emulator: it stands for a remote GPU box, not a neighbour of the "
                             "workers, so it should not lose the CPU to them (0 = inherit)")
    parser.add_argument("--nice", type=int, default=0, help="nice value of the gateway and the workers")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)
    if not (1 <= args.jobs <= 5000 and 0 <= args.baseline_jobs <= 5000 and 1 <= args.workers <= 8
            and 1 <= args.tenants <= 64):
        parser.error("jobs in 1..5000, baseline-jobs in 0..5000, workers in 1..8, tenants in 1..64")

    tmp = Path(tempfile.mkdtemp(prefix="medparse-util-"))
    verdict = False
    try:
        # The database is dropped and the namespace's keys deleted after the processes stopped.
        with throwaway_database("medparse_bench") as database, throwaway_namespace("mpbench") as namespace:
            bench = Bench(args, tmp, database, namespace)
            try:
                bench.setup()
                phases = [bench.run_phase(Phase("capped", args.jobs, CAPACITY), args.max_phase_s)]
                if args.headroom:
                    phases.append(bench.run_phase(Phase("headroom", args.jobs, args.headroom), args.max_phase_s))
                if args.baseline_jobs:
                    phases.append(bench.run_phase(
                        Phase("uncapped", args.baseline_jobs, args.baseline_per_instance), args.max_phase_s))
                verdict = report(phases, args)
            finally:
                bench.teardown()
    finally:
        if args.keep_logs or not verdict:
            print(f"logs kept in {tmp}")
        else:
            for path in tmp.rglob("*"):
                if path.is_file():
                    path.unlink()
            for path in sorted(tmp.rglob("*"), reverse=True):
                path.rmdir()
            tmp.rmdir()
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
