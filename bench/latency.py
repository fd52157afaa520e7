"""Latency the gateway ADDS over calling the endpoint directly with the same preprocessing.

Run with ``.venv/bin/python -m bench.latency`` (about 1-2 minutes). Needs the machine's PostgreSQL
(127.0.0.1:5432, trust) and Redis (127.0.0.1:6379); override with ``MEDPARSE_TEST_PG_URL`` /
``MEDPARSE_TEST_REDIS_URL``.

Set-up (all private to this run, torn down at the end even on failure): a throwaway Postgres
database (created, migrated, dropped), a random Redis namespace (its keys deleted), a tenant and
key, and five subprocesses: as tests/support/processes.py starts them, the endpoint emulator with a
fixed latency (``--latency-ms``, so the endpoint part is stable), the gateway (its default: one
process per CPU) and one Celery worker; and the floor's server and worker (bench/latency_floor.py,
its tables created in the same database).

The paths, interleaved sample by sample so machine drift hits all alike, one request at a time
(load well under 50 %):

* direct: in this process, ``workers.pipeline.segment`` with an ``EndpointClient`` pointed at the
  emulator (prepare_image -> score -> masks_to_original -> area/bbox/encode). A direct caller has
  no cross-process in-flight cap, so it gets the in-process ``LocalInFlightLimiter``; the worker's
  Redis limiter is part of what the gateway adds.
* gateway: ``POST /v1/jobs`` (multipart, same image and prompts) with ``Prefer: wait=30``, timed
  from send until the terminal job is received (a GET with ``Prefer: wait`` follows if the POST
  answered before the job ended, which should not happen).

* floor: the same upload through bench/latency_floor.py, the least a service with this pipeline
  must do (durable INSERT with the image, Celery, a claim, the same ``segment``, the result
  committed, Redis pub/sub back), with none of our features. What it adds over direct is what
  the pipeline itself costs on this machine; the gateway's figure reads against it.

Three paths are interleaved (every order in turn), not two.

Target (performance-limits.md, "End-to-end overhead"): added <= 10 ms at p50 and <= 25 ms at p99;
the exit status is 0 on PASS, 1 on FAIL. The breakdown comes from the job's own timestamps
(created_at / started_at / completed_at, all taken with this host's clock) against the client's
send and receive times. The box is shared: the load average is printed, read the tails with it.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import itertools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import cv2
import httpx
import numpy as np
import psycopg

from bench import latency_floor
from tests.support.ports import free_port
from tests.support.processes import stop, wait_http
from tests.support.throwaway import REDIS_URL, throwaway_database, throwaway_namespace

REPO = Path(__file__).resolve().parent.parent

PROMPTS = "liver & kidney"
TARGET_P50_MS = 10.0
TARGET_P99_MS = 25.0
WAIT_S = 30
SAMPLE_TIMEOUT_S = 60.0  # one gateway sample never takes longer than this
STARTUP_TIMEOUT_S = 60.0
FLOOR_SCRIPT = REPO / "bench" / "latency_floor.py"
#: Every order of the three paths, taken in turn.
PATH_ORDERS = list(itertools.permutations(("direct", "gateway", "floor")))


# --- helpers -------------------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float:
    """Percentile by linear interpolation (numpy's default), q in 0..100."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def test_image(n: int = 512, seed: int = 7) -> bytes:
    """A 512x512 gray CT-like PNG: body ellipse, a few organs, blur and noise (fixed seed)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((n, n), np.float32)
    cv2.ellipse(img, (n // 2, n // 2), (int(n * 0.42), int(n * 0.32)), 0, 0, 360, 110.0, -1)
    for _ in range(6):
        centre = (int(rng.integers(n * 0.3, n * 0.7)), int(rng.integers(n * 0.35, n * 0.65)))
        axes = (int(rng.integers(15, 60)), int(rng.integers(15, 50)))
        cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, float(rng.uniform(60, 220)), -1)
    img = cv2.GaussianBlur(img, (0, 0), 2.0) + rng.normal(0, 6, img.shape).astype(np.float32)
    ok, png = cv2.imencode(".png", np.clip(img, 0, 255).astype(np.uint8))
    assert ok
    return png.tobytes()


def parse_ts(value: str | None) -> float | None:
    return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# --- the throwaway environment -----------------------------------------------------------------

def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDPARSE_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def start(args: list[str], env: dict[str, str], log: Path, *, script: Path | None = None) -> subprocess.Popen[bytes]:
    """``python -m runtime.cli ARGS`` (or ``python SCRIPT ARGS``), output into ``log``."""
    command = [sys.executable, str(script), *args] if script else [sys.executable, "-m", "runtime.cli", *args]
    with log.open("ab") as handle:
        return subprocess.Popen(command, env=env, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)


@contextlib.contextmanager
def processes(
    env: dict[str, str], floor_env: dict[str, str], tmp: Path, latency_ms: float, keep_logs: bool
) -> Iterator[dict[str, object]]:
    """Emulator, gateway and one worker, and the floor's server and worker (bench/latency_floor.py);
    yields their URLs and Popen objects."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        emu_port, gw_port = free_port(), free_port()
        emulator = start(
            ["emulator", "--port", str(emu_port), "--latency-ms", f"{latency_ms:g}", "--rate-limit-rps", "0"],
            child_env(MEDPARSE_EMULATOR_KEY=env["MEDPARSE_ENDPOINT_KEY"], MEDPARSE_LOG_LEVEL="WARNING"),
            tmp / "emulator.log",
        )
        procs.append(emulator)
        emulator_url = f"http://127.0.0.1:{emu_port}"
        wait_http(f"{emulator_url}/", seconds=STARTUP_TIMEOUT_S, proc=emulator)
        service_env = {
            **env,
            "MEDPARSE_PORT": str(gw_port),
            "MEDPARSE_ENDPOINT_SCORING_URI": f"{emulator_url}/score",
        }
        gateway = start(["serve"], service_env, tmp / "gateway.log")
        procs.append(gateway)
        worker = start(["worker", "--concurrency", "2"], service_env, tmp / "worker.log")
        procs.append(worker)
        gateway_url = f"http://127.0.0.1:{gw_port}"
        floor_port = free_port()
        floor_env = child_env(**floor_env, FLOOR_PORT=str(floor_port), FLOOR_SCORING_URI=f"{emulator_url}/score")
        floor = start(["serve"], floor_env, tmp / "floor-server.log", script=FLOOR_SCRIPT)
        procs.append(floor)
        procs.append(start(["worker"], floor_env, tmp / "floor-worker.log", script=FLOOR_SCRIPT))
        floor_url = f"http://127.0.0.1:{floor_port}"
        wait_http(f"{gateway_url}/healthz", seconds=STARTUP_TIMEOUT_S, proc=gateway)
        wait_http(f"{floor_url}/healthz", seconds=STARTUP_TIMEOUT_S, proc=floor)
        yield {"emulator": emulator_url, "gateway": gateway_url, "floor": floor_url, "pids": {
            "emulator": emulator.pid, "gateway": gateway.pid, "worker": worker.pid}, "procs": procs}
    finally:
        for proc in reversed(procs):
            stop(proc)
        if keep_logs:
            for log in sorted(tmp.glob("*.log")):
                text = log.read_text(errors="replace").strip()
                if text:
                    print(f"--- {log.name} (last lines) ---\n" + "\n".join(text.splitlines()[-15:]))


# --- the two paths -------------------------------------------------------------------------------

def direct_caller(client: object) -> dict[str, object]:
    """The keyword that hands ``segment`` its endpoint: ``client``, or a one-row ``batcher`` around it.

    A direct caller sends one image per request, so a batcher (if this version has one) gets
    max_rows=1, which calls the client straight away.
    """
    from workers.pipeline import segment

    if "batcher" in inspect.signature(segment).parameters:
        from workers.batching import RowBatcher

        return {"batcher": RowBatcher(client, 1, 0.0)}  # type: ignore[arg-type]
    return {"client": client}


def direct_sample(image: bytes, prompts: list[str], settings: object, caller: dict[str, object]) -> tuple[float, float]:
    from workers.pipeline import segment

    t0 = time.perf_counter()
    result = segment(image, prompts, settings=settings, job_id=str(uuid.uuid4()), **caller)  # type: ignore[arg-type]
    elapsed = (time.perf_counter() - t0) * 1e3
    assert len(result.masks) == len(prompts)
    return elapsed, float(result.provenance["endpoint_seconds"]) * 1e3


def gateway_sample(http: httpx.Client, image: bytes) -> dict[str, float]:
    """One job from send to terminal answer; returns wall ms and the job's timestamps."""
    sent_wall = time.time()
    t0 = time.perf_counter()
    resp = http.post(
        "/v1/jobs",
        files={"image": ("scan.png", image, "image/png")},
        data={"prompts": PROMPTS},
        headers={"Prefer": f"wait={WAIT_S}"},
    )
    if resp.status_code != 202:
        raise RuntimeError(f"POST /v1/jobs answered {resp.status_code}: {resp.text[:300]}")
    job = resp.json()
    extra_gets = 0
    deadline = time.monotonic() + SAMPLE_TIMEOUT_S
    while job["status"] in ("queued", "running"):
        if time.monotonic() > deadline or extra_gets >= 10:
            raise RuntimeError(f"job {job['id']} not terminal after {SAMPLE_TIMEOUT_S} s: {job['status']}")
        extra_gets += 1
        job = http.get(resp.headers["Location"], headers={"Prefer": f"wait={WAIT_S}"}).json()
    elapsed = (time.perf_counter() - t0) * 1e3
    recv_wall = time.time()
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job['id']} ended {job['status']}: {job.get('error')}")
    created, started, completed = (parse_ts(job[k]) for k in ("created_at", "started_at", "completed_at"))
    assert created is not None and started is not None and completed is not None
    return {
        "total": elapsed,
        "ingress": (created - sent_wall) * 1e3,  # upload, parse, auth, probe (until created_at is stamped)
        "queue": (started - created) * 1e3,  # INSERT commit, dispatch to the broker, Celery delivery, claim stamp
        "worker": (completed - started) * 1e3,  # claim tx + reads + segment() incl. endpoint
        "egress": (recv_wall - completed) * 1e3,  # finish tx, notify, wake, re-read, response
        "endpoint": float(job["result"]["provenance"]["endpoint_seconds"]) * 1e3,
        "extra_gets": float(extra_gets),
    }


def floor_sample(http: httpx.Client, image: bytes) -> float:
    """One job through bench/latency_floor.py, from send to its answer; returns wall ms."""
    t0 = time.perf_counter()
    resp = http.post("/jobs", files={"image": ("scan.png", image, "image/png")}, data={"prompts": PROMPTS})
    if resp.status_code != 200 or resp.json()["status"] != "succeeded":
        raise RuntimeError(f"floor answered {resp.status_code}: {resp.text[:300]}")
    return (time.perf_counter() - t0) * 1e3


# --- main -------------------------------------------------------------------------------------

def summarize(name: str, values: list[float]) -> str:
    return (f"{name:<34} {pct(values, 50):9.1f} {pct(values, 90):9.1f} {pct(values, 99):9.1f}"
            f" {min(values):9.1f} {max(values):9.1f}")


def run(args: argparse.Namespace) -> int:
    from medparse.endpoint.client import EndpointClient
    from medparse.endpoint.limiter import LocalInFlightLimiter
    from medparse.settings import Settings
    from runtime.cli import create_tenant
    from runtime.migrate import upgrade

    image = test_image()
    prompts = [p.strip() for p in PROMPTS.split("&")]
    emulator_key = secrets.token_urlsafe(16)
    tmp = Path(tempfile.mkdtemp(prefix="medparse-latency-"))
    failed = True
    try:
        with (
            throwaway_database("medparse_bench_latency") as database,
            throwaway_namespace("mpbench-latency") as namespace,
        ):
            db_url = database.async_url
            settings = Settings(
                database_url=db_url, redis_url=REDIS_URL, redis_namespace=namespace,
                data_dir=tmp / "var", log_level="WARNING",
            )
            upgrade(settings)
            _, api_key = create_tenant(settings, f"bench-{uuid.uuid4().hex[:8]}")
            env = child_env(
                MEDPARSE_DATA_DIR=str(settings.data_dir.resolve()),
                MEDPARSE_REDIS_NAMESPACE=namespace,
                MEDPARSE_DATABASE_URL=db_url,
                MEDPARSE_REDIS_URL=REDIS_URL,
                MEDPARSE_ENDPOINT_KEY=emulator_key,
                MEDPARSE_LOG_LEVEL="WARNING",
            )
            with psycopg.connect(database.conninfo, autocommit=True) as conn:
                conn.execute(latency_floor.SCHEMA)
            floor_env = {
                "FLOOR_PG_URL": database.conninfo, "FLOOR_REDIS_URL": REDIS_URL, "FLOOR_NAMESPACE": namespace,
                "FLOOR_ENDPOINT_KEY": emulator_key, "FLOOR_DATA_DIR": str(tmp / "floor"),
            }
            with processes(env, floor_env, tmp, args.latency_ms, keep_logs=args.logs) as procs:
                pids = procs["pids"]
                print(f"pids: {pids}  (e.g. py-spy dump --pid <pid>)", flush=True)
                direct_settings = Settings(
                    endpoint_scoring_uri=f"{procs['emulator']}/score", endpoint_key=emulator_key,
                    data_dir=tmp / "direct", log_level="WARNING",
                )
                client = EndpointClient(direct_settings, limiter=LocalInFlightLimiter(8))
                caller = direct_caller(client)
                http = httpx.Client(
                    base_url=str(procs["gateway"]), headers={"Authorization": f"Bearer {api_key}"},
                    timeout=httpx.Timeout(SAMPLE_TIMEOUT_S, connect=5.0),
                )
                floor_http = httpx.Client(
                    base_url=str(procs["floor"]), timeout=httpx.Timeout(SAMPLE_TIMEOUT_S, connect=5.0)
                )
                try:
                    # Warm-up: the first job waits for the worker to connect; bounded by STARTUP_TIMEOUT_S.
                    deadline = time.monotonic() + STARTUP_TIMEOUT_S
                    gateway_sample(http, image)
                    floor_sample(floor_http, image)
                    for _ in range(args.warmup):
                        if time.monotonic() > deadline:
                            break
                        direct_sample(image, prompts, direct_settings, caller)
                        gateway_sample(http, image)
                        floor_sample(floor_http, image)

                    direct: list[float] = []
                    direct_endpoint: list[float] = []
                    via: list[dict[str, float]] = []
                    floor: list[float] = []
                    started = time.monotonic()
                    for i in range(args.samples):
                        # Rotate which path goes first so none always follows another.
                        for which in PATH_ORDERS[i % len(PATH_ORDERS)]:
                            if which == "direct":
                                ms, endpoint_ms = direct_sample(image, prompts, direct_settings, caller)
                                direct.append(ms)
                                direct_endpoint.append(endpoint_ms)
                            elif which == "gateway":
                                via.append(gateway_sample(http, image))
                            else:
                                floor.append(floor_sample(floor_http, image))
                            time.sleep(args.gap_ms / 1000.0)
                        if time.monotonic() - started > args.max_seconds:
                            print(f"(stopped after {i + 1} rounds: {args.max_seconds:g} s budget)")
                            break
                finally:
                    http.close()
                    floor_http.close()
                    client.close()

            report(direct, direct_endpoint, via, floor, args)
            failed = False
            return 0 if passed(direct, via) else 1
    finally:
        if failed:
            for log in sorted(tmp.glob("*.log")):
                text = log.read_text(errors="replace").strip()
                if text:
                    print(f"--- {log.name} (last lines) ---\n" + "\n".join(text.splitlines()[-20:]), file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


def added(direct: list[float], via: list[dict[str, float]]) -> tuple[float, float]:
    total = [v["total"] for v in via]
    return pct(total, 50) - pct(direct, 50), pct(total, 99) - pct(direct, 99)


def passed(direct: list[float], via: list[dict[str, float]]) -> bool:
    p50, p99 = added(direct, via)
    return p50 <= TARGET_P50_MS and p99 <= TARGET_P99_MS


def report(
    direct: list[float], direct_endpoint: list[float], via: list[dict[str, float]], floor: list[float],
    args: argparse.Namespace,
) -> None:
    total = [v["total"] for v in via]
    n = min(len(direct), len(total))
    paired = [total[i] - direct[i] for i in range(n)]
    print()
    print(f"load average (1/5/15 min) at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
          " (the box is shared; high load widens both paths' tails)")
    print(f"samples: {len(direct)} direct, {len(total)} through the gateway (sequential, interleaved); "
          f"emulator latency {args.latency_ms:g} ms; image 512x512 gray PNG; prompts {PROMPTS!r}")
    print(f"{'ms':<34} {'p50':>9} {'p90':>9} {'p99':>9} {'min':>9} {'max':>9}")
    print(summarize("direct segment()", direct))
    print(summarize("gateway POST + Prefer: wait", total))
    print(summarize("floor (bench/latency_floor.py)", floor))
    print(summarize("paired difference (gw_i - dir_i)", paired))
    print()
    print("breakdown of the gateway path (job timestamps vs client clock)")
    print(summarize("  send -> created_at (ingress)", [v["ingress"] for v in via]))
    print(summarize("  created_at -> started_at (queue)", [v["queue"] for v in via]))
    print(summarize("  started_at -> completed_at (work)", [v["worker"] for v in via]))
    print(summarize("  completed_at -> received (egress)", [v["egress"] for v in via]))
    print(summarize("  endpoint call, in the worker", [v["endpoint"] for v in via]))
    print(summarize("  endpoint call, direct", direct_endpoint))
    work_extra = pct([v["worker"] for v in via], 50) - pct(direct, 50)
    print(f"  worker time beyond direct segment() at p50: {work_extra:+.1f} ms "
          f"(claim tx + image read + Redis in-flight slot + finish stamp)")
    extra_gets = sum(v["extra_gets"] for v in via)
    if extra_gets:
        print(f"  note: {extra_gets:g} follow-up GETs were needed (POST answered before the job ended)")
    p50, p99 = added(direct, via)
    floor_p50, floor_p99 = pct(floor, 50) - pct(direct, 50), pct(floor, 99) - pct(direct, 99)
    print()
    print(f"the floor adds p50 {floor_p50:.1f} ms, p99 {floor_p99:.1f} ms: the least this pipeline costs here;"
          f" the gateway adds {p50 - floor_p50:+.1f} / {p99 - floor_p99:+.1f} ms beyond it")
    ok50, ok99 = p50 <= TARGET_P50_MS, p99 <= TARGET_P99_MS
    print(f"added latency p50: {p50:6.1f} ms  (target <= {TARGET_P50_MS:g} ms)  {'PASS' if ok50 else 'FAIL'}")
    print(f"added latency p99: {p99:6.1f} ms  (target <= {TARGET_P99_MS:g} ms)  {'PASS' if ok99 else 'FAIL'}")
    print(f"RESULT: {'PASS' if ok50 and ok99 else 'FAIL'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=100, help="timed samples per path (default 100)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed rounds of every path first (default 10)")
    parser.add_argument("--latency-ms", type=float, default=50.0,
                        help="emulator's fixed latency (its own decode+segment time, ~25-30 ms, counts towards it)")
    parser.add_argument("--gap-ms", type=float, default=20.0, help="pause between samples (keeps load low)")
    parser.add_argument("--max-seconds", type=float, default=150.0, help="bound on the timed phase")
    parser.add_argument("--logs", action="store_true", help="print the tail of the child logs at the end")
    args = parser.parse_args()
    if args.samples < 1 or args.warmup < 0:
        parser.error("--samples must be >= 1 and --warmup >= 0")
    # A plain kill must still drop the database, delete the Redis keys and stop the children.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(run(args))


if __name__ == "__main__":
    main()
