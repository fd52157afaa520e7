"""Gateway accept path under load: the real gateway beside a minimal aiohttp baseline.

Run with ``.venv/bin/python -m bench.accept`` (40-75 s with the defaults; ``--help`` for knobs).

What it does, all on 127.0.0.1:
- creates a throwaway database ``medparse_bench_<random>`` (dropped at the end, also on failure or
  SIGTERM), migrates it, creates ``--tenants`` tenants with an API key each, and uses a random Redis
  namespace whose keys are deleted at the end;
- starts the real gateway (``python -m runtime.cli serve``: one process per core by default, or
  ``--gateway-cmd``) as a subprocess, no worker, with the per-tenant rate and queue limits lifted
  (capacity, not policy, is measured; ``--default-quotas`` keeps them and counts the 429s as
  non-202; ``--gateway-env`` adds settings);
- loads ``POST /v1/jobs`` (multipart: a ~40 kB grayscale PNG + ``prompts=liver & kidney``) from a
  separate load-generator process: (a) closed loop with ``--connections`` keep-alive connections for
  the maximum rate, (b) if that maximum reaches it, an open-loop paced ``--rate`` (latency counted
  from the *scheduled* send time, so queueing in the generator is not hidden);
- does the same against a baseline: a raw aiohttp server (a subprocess of this file) that reads the
  same multipart body, does one asyncpg INSERT (with the image bytes) and one redis.asyncio LPUSH,
  and answers 202 JSON;
- checks that the rows in Postgres match the 202s the generator counted, and prints a table with
  PASS/FAIL against the targets (>= 1,000 jobs/s; p99 <= 50 ms at 1,000 jobs/s; gateway/baseline >= 0.5),
  plus the cores each party used and the server's CPU per accepted job.

The load generator is a minimal HTTP/1.1 client on asyncio protocols with a pre-built request: it
costs ~50 us of CPU per request, a fraction of an aiohttp client (this box has 2 cores, shared by the
generator, the server under test, PostgreSQL and Redis). ``wrk`` is used for the max-throughput phases
if it is on PATH (and ``--no-wrk`` is not given); the paced phases always use the Python generator.

The box is shared: the script prints how busy it was before starting and the "other" cores during
each phase. Server CPU per job is the figure that moves least with that noise.

``--profile`` adds one more max-load phase on the gateway with ``py-spy record`` attached (py-spy
must be installed; ``--profile-gil`` samples only the GIL holder) and prints the top functions.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import io
import json
import math
import multiprocessing as mp
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.ports import free_port
from tests.support.processes import stop, wait_http
from tests.support.throwaway import PG_ADMIN_URL, REDIS_URL

REPO = Path(__file__).resolve().parent.parent

PROMPTS = "liver & kidney"
BASELINE_TABLE = "bench_baseline_jobs"
TARGET_JOBS_S = 1000.0
TARGET_P99_MS = 50.0
TARGET_RATIO = 0.5
REQUEST_TIMEOUT_S = 30.0
#: Per-tenant limits lifted for the measurement (``--default-quotas`` keeps the configured ones).
QUOTA_ENV = {
    "MEDPARSE_TENANT_RATE_LIMIT_RPS": "1000000",
    "MEDPARSE_TENANT_RATE_LIMIT_BURST": "1000000",
    "MEDPARSE_TENANT_MAX_QUEUED_JOBS": "100000000",
}
DRAIN_S = 10.0


# --- the upload ---------------------------------------------------------------------------------

def ct_like_png(target_bytes: int = 40_000, n: int = 256, seed: int = 7) -> tuple[bytes, float]:
    """A CT-like n x n 8-bit slice (body, organs, blur, noise) whose PNG is about ``target_bytes``.

    The noise level is found by bisection; returns (png, noise sigma).
    """
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    base = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(base)
    draw.ellipse((n * 0.08, n * 0.18, n * 0.92, n * 0.82), fill=105)
    for _ in range(6):
        cx, cy = rng.uniform(n * 0.3, n * 0.7), rng.uniform(n * 0.35, n * 0.65)
        rx, ry = rng.uniform(n * 0.03, n * 0.12), rng.uniform(n * 0.03, n * 0.1)
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=int(rng.uniform(60, 210)))
    smooth = np.asarray(base.filter(ImageFilter.GaussianBlur(1.5)), dtype=np.float32)
    noise = rng.normal(0, 1, smooth.shape).astype(np.float32)

    def encode(sigma: float) -> bytes:
        pixels = np.clip(smooth + sigma * noise, 0, 255).astype(np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels, "L").save(out, format="PNG")
        return out.getvalue()

    lo, hi = 0.0, 40.0
    best = encode(hi)
    best_sigma = hi
    for _ in range(20):
        mid = (lo + hi) / 2
        png = encode(mid)
        if abs(len(png) - target_bytes) < abs(len(best) - target_bytes):
            best, best_sigma = png, mid
        if len(png) < target_bytes:
            lo = mid
        else:
            hi = mid
        if abs(len(png) - target_bytes) <= target_bytes * 0.01:
            break
    return best, best_sigma


def multipart_body(png: bytes, prompts: str) -> tuple[bytes, str]:
    boundary = f"----medparse-bench-{uuid.uuid4().hex}"
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="image"; filename="slice.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    tail = (
        f"\r\n--{boundary}\r\n"
        'Content-Disposition: form-data; name="prompts"\r\n\r\n'
        f"{prompts}\r\n"
        f"--{boundary}--\r\n"
    ).encode()
    return head + png + tail, f"multipart/form-data; boundary={boundary}"


def raw_request(port: int, key: str, body: bytes, content_type: str) -> bytes:
    head = (
        "POST /v1/jobs HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "User-Agent: medparse-bench\r\n"
        "Accept: application/json\r\n"
        f"Authorization: Bearer {key}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


# --- load generator (runs in its own process) ---------------------------------------------------

class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time; Content-Length or chunked replies."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.fut: asyncio.Future[tuple[int, bytes]] | None = None
        self.head_end = -1
        self.body_end = -1  # -1: headers not parsed, -2: chunked
        self.status = 0
        self.close_after = False
        self.lost = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.lost = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.fut is not None and not self.fut.done():
            self.fut.set_exception(ConnectionError(f"connection lost: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.fut is not None:
            self._parse()

    def _parse_head(self, end: int) -> None:
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ", 2)[1])
        length, chunked, close = None, False, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        self.head_end = end + 4
        self.close_after = close
        if chunked:
            self.body_end = -2
        elif length is None:
            self.body_end = self.head_end  # no body we can delimit; treat as empty
            self.close_after = True
        else:
            self.body_end = self.head_end + length

    def _parse(self) -> None:
        buf = self.buf
        if self.body_end == -1:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                return
            self._parse_head(i)
        if self.body_end == -2:
            j = buf.find(b"0\r\n\r\n", self.head_end)
            if j < 0:
                return
            end = j + 5
        else:
            if len(buf) < self.body_end:
                return
            end = self.body_end
        body = bytes(buf[self.head_end:end])
        del buf[:end]
        self.body_end = -1
        fut, self.fut = self.fut, None
        if fut is not None and not fut.done():
            fut.set_result((self.status, body))

    def _timeout(self) -> None:
        if self.fut is not None and not self.fut.done():
            self.fut.set_exception(TimeoutError("no response in time"))
        if self.transport is not None:
            self.transport.abort()

    async def request(self, data: bytes, timeout: float) -> tuple[int, bytes]:
        assert self.transport is not None and not self.lost
        loop = asyncio.get_running_loop()
        self.fut = loop.create_future()
        self.body_end = -1
        handle = loop.call_later(timeout, self._timeout)
        try:
            self.transport.write(data)
            return await self.fut
        finally:
            handle.cancel()


async def _connect(port: int) -> HttpConnection:
    loop = asyncio.get_running_loop()
    for attempt in range(50):
        try:
            _, proto = await loop.create_connection(HttpConnection, "127.0.0.1", port)
            return proto
        except OSError:
            await asyncio.sleep(0.05 * (attempt + 1))
    raise ConnectionError(f"cannot connect to 127.0.0.1:{port}")


@dataclass
class GenStats:
    statuses: Counter[int] = field(default_factory=Counter)  # every reply, whole run
    errors: Counter[str] = field(default_factory=Counter)  # no reply (timeout, reset), whole run
    window_ok: int = 0  # 202s completed inside the measurement window
    window_other: Counter[int] = field(default_factory=Counter)  # non-202 replies inside the window
    latencies: array.array = field(default_factory=lambda: array.array("d"))  # seconds, 202s only
    sent: int = 0
    unsent: int = 0  # paced requests never sent (the generator fell behind before the end)
    abandoned: int = 0  # in flight when the drain timed out: outcome unknown


async def _one(conn_box: list[HttpConnection], port: int, req: bytes, st: GenStats) -> tuple[int, float] | None:
    conn = conn_box[0]
    if conn.lost or conn.close_after:
        if conn.transport is not None:
            conn.transport.close()
        conn = conn_box[0] = await _connect(port)
    st.sent += 1
    try:
        status, _ = await conn.request(req, REQUEST_TIMEOUT_S)
    except (ConnectionError, TimeoutError, OSError) as exc:
        st.errors[type(exc).__name__] += 1
        return None
    st.statuses[status] += 1
    return status, time.monotonic()


async def _closed_loop(conns: list[HttpConnection], port: int, reqs: list[bytes], t_start: float, t_end: float,
                       st: GenStats) -> None:
    async def worker(conn: HttpConnection, req: bytes) -> None:
        box = [conn]
        while True:
            t_send = time.monotonic()
            if t_send >= t_end:
                return
            got = await _one(box, port, req, st)
            if got is None:
                await asyncio.sleep(0.01)
                continue
            status, t_done = got
            if t_start <= t_done < t_end:
                if status == 202:
                    st.window_ok += 1
                    st.latencies.append(t_done - t_send)
                else:
                    st.window_other[status] += 1

    await asyncio.gather(*(worker(c, reqs[i % len(reqs)]) for i, c in enumerate(conns)))


async def _open_loop(conns: list[HttpConnection], port: int, reqs: list[bytes], rate: float, t0: float,
                     t_start: float, t_end: float, st: GenStats) -> None:
    queue: asyncio.Queue[float] = asyncio.Queue()
    total = int((t_end - t0) * rate)

    async def worker(conn: HttpConnection, req: bytes) -> None:
        box = [conn]
        while True:
            scheduled = await queue.get()
            try:
                got = await _one(box, port, req, st)
                if got is None:
                    continue
                status, t_done = got
                if t_start <= t_done < t_end and status != 202:
                    st.window_other[status] += 1
                if status == 202:
                    if t_start <= t_done < t_end:
                        st.window_ok += 1
                    if t_start <= scheduled < t_end:
                        st.latencies.append(t_done - scheduled)
            finally:
                queue.task_done()

    workers = [asyncio.create_task(worker(c, reqs[i % len(reqs)])) for i, c in enumerate(conns)]
    i = 0
    while i < total:
        now = time.monotonic()
        due = t0 + i / rate
        if due > now:
            await asyncio.sleep(due - now)
            continue
        while i < total and t0 + i / rate <= now:
            queue.put_nowait(t0 + i / rate)
            i += 1
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(queue.join(), DRAIN_S)
    st.unsent = queue.qsize()
    for w in workers:
        w.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    # sent but neither answered nor failed before the drain ended: outcome unknown
    st.abandoned = max(0, st.sent - sum(st.statuses.values()) - sum(st.errors.values()))


async def _generate(cfg: dict[str, Any], ctl: Any) -> dict[str, Any]:
    conns = [await _connect(cfg["port"]) for _ in range(cfg["connections"])]
    ctl.send("ready")
    if not ctl.poll(60):
        raise RuntimeError("no start time from the orchestrator")
    t0_wall = ctl.recv()
    t0 = time.monotonic() + (t0_wall - time.time())
    t_start, t_end = t0 + cfg["warmup"], t0 + cfg["warmup"] + cfg["duration"]
    await asyncio.sleep(max(0.0, t0 - time.monotonic()))
    st = GenStats()
    if cfg["rate"]:
        await _open_loop(conns, cfg["port"], cfg["requests"], cfg["rate"], t0, t_start, t_end, st)
    else:
        await _closed_loop(conns, cfg["port"], cfg["requests"], t_start, t_end, st)
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    return {
        "statuses": dict(st.statuses),
        "errors": dict(st.errors),
        "window_ok": st.window_ok,
        "window_other": dict(st.window_other),
        "latencies": st.latencies.tobytes(),
        "sent": st.sent,
        "unsent": st.unsent,
        "abandoned": st.abandoned,
    }


def loadgen_main(cfg: dict[str, Any], ctl: Any) -> None:
    """Entry point of a load-generator process; the result goes back over ``ctl``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the orchestrator decides when we stop
    try:
        result = asyncio.run(_generate(cfg, ctl))
        ctl.send(("result", result))
    except BaseException as exc:  # report, never hang the orchestrator
        ctl.send(("error", f"{type(exc).__name__}: {exc}"))


# --- wrk (optional, max-throughput phases only) -------------------------------------------------

WRK_LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "%(ctype)s"
wrk.headers["Authorization"] = "Bearer %(key)s"
local f = assert(io.open("%(body)s", "rb"))
wrk.body = f:read("*all")
f:close()
local counts = {}
response = function(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end
done = function(summary, latency, requests)
  io.write("WRKJSON {")
  io.write(string.format('"requests": %%d, "duration_us": %%d, ', summary.requests, summary.duration))
  io.write(string.format('"p50_us": %%d, "p99_us": %%d, "max_us": %%d, ',
           latency:percentile(50), latency:percentile(99), latency.max))
  io.write(string.format('"connect": %%d, "read": %%d, "write": %%d, "timeout": %%d, "status": %%d',
           summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout,
           summary.errors.status))
  io.write("}\n")
end
"""


# --- the baseline server (runs as ``bench/accept.py --serve-baseline``) -----------------------------

def serve_baseline(args: argparse.Namespace) -> None:
    import asyncpg
    import orjson
    import redis.asyncio as aioredis
    from aiohttp import BodyPartReader, web

    async def on_startup(app: web.Application) -> None:
        app["pool"] = await asyncpg.create_pool(args.dsn, min_size=8, max_size=16)
        app["redis"] = aioredis.Redis.from_url(args.redis_url)

    async def on_cleanup(app: web.Application) -> None:
        await app["pool"].close()
        await app["redis"].aclose()

    async def create_job(request: web.Request) -> web.Response:
        reader = await request.multipart()
        image = prompts = None
        for _ in range(8):
            part = await reader.next()
            if not isinstance(part, BodyPartReader):
                break
            if part.name == "image":
                image = await part.read()
            elif part.name == "prompts":
                prompts = await part.text()
        if not image or prompts is None:
            return web.Response(status=422, body=b'{"error":"image and prompts required"}',
                                content_type="application/json")
        job_id = uuid.uuid4()
        await request.app["pool"].execute(
            f"INSERT INTO {BASELINE_TABLE} (id, prompts, image) VALUES ($1, $2, $3)", job_id, prompts, image
        )
        await request.app["redis"].lpush(args.redis_key, str(job_id))
        return web.Response(status=202, body=orjson.dumps({"id": str(job_id), "status": "queued"}),
                            content_type="application/json")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type="application/json")

    app = web.Application(client_max_size=32 * 1024 * 1024)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_post("/v1/jobs", create_job)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


# --- orchestration helpers -----------------------------------------------------------------------

def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
    if proc is not None:
        stop(proc, timeout)


def smoke_post(port: int, request: bytes) -> tuple[int, bytes]:
    """One request over a plain socket, so a broken setup fails before the load starts."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request.replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\nConnection: close\r\n", 1))
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


CLK = os.sysconf("SC_CLK_TCK")


@dataclass
class CpuSnapshot:
    wall: float
    busy: float  # CPU seconds of the whole machine (all processes, kernel included)
    procs: dict[tuple[int, str], tuple[str, float, float]]  # (pid, start) -> (role, cpu s, kernel s)


def cpu_snapshot(roles: dict[int, str], dbname: str = "") -> CpuSnapshot:
    """CPU seconds per process, with a role: our pids, postgres (our database's backends and the
    server's own processes), redis, other (everything else, other databases' backends included)."""
    procs: dict[tuple[int, str], tuple[str, float, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode("latin-1")
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2:].split()
            pid, ppid = int(entry), int(fields[1])
            if pid in roles:
                role = roles[pid]
            elif ppid in roles:  # a gateway started with several processes: its children serve
                role = roles[ppid]
            elif comm.startswith("postgres"):
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read().decode("latin-1")
                backend = re.match(r"postgres: [^:]+: \S+ (\S+) ", cmdline)
                role = "postgres" if backend is None or backend.group(1) == dbname else "other"
            elif comm.startswith("redis"):
                role = "redis"
            else:
                role = "other"
        except (OSError, ValueError):
            continue
        procs[(pid, fields[19])] = (role, (int(fields[11]) + int(fields[12])) / CLK, int(fields[12]) / CLK)
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    busy = (sum(parts[:8]) - parts[3] - parts[4]) / CLK
    return CpuSnapshot(time.monotonic(), busy, procs)


def cpu_cores(a: CpuSnapshot, b: CpuSnapshot) -> dict[str, float]:
    """Cores used between two snapshots by role (``<role>.sys`` for our own pids' kernel share)."""
    span = b.wall - a.wall
    used: dict[str, float] = {}
    for key, (role, secs, sys_secs) in b.procs.items():
        _, secs0, sys0 = a.procs.get(key, (role, 0.0, 0.0))
        used[role] = used.get(role, 0.0) + secs - secs0
        if role not in ("postgres", "redis", "other"):
            used[f"{role}.sys"] = used.get(f"{role}.sys", 0.0) + sys_secs - sys0
    out = {k: v / span for k, v in used.items()}
    out["total"] = (b.busy - a.busy) / span
    return out


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class PhaseResult:
    name: str
    mode: str  # "max" or "rate"
    offered: float | None
    duration: float
    jobs_s: float = 0.0
    p50_ms: float = math.nan
    p90_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan
    ok_total: int = 0  # all 202s of the phase, warm-up and drain included
    non202_total: Counter[int] = field(default_factory=Counter)
    errors_total: Counter[str] = field(default_factory=Counter)
    unsent: int = 0
    abandoned: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # cores used during the window, by role
    tool: str = "python"

    def line(self) -> str:
        cpu = " ".join(f"{k}={v:.2f}" for k, v in sorted(self.cpu.items())
                       if v >= 0.005 and not k.endswith(".sys") and k != "orchestrator")
        if self.jobs_s > 0 and "server" in self.cpu:
            cpu += (f" | server CPU {1000 * self.cpu['server'] / self.jobs_s:.2f} ms/job"
                    f" ({100 * self.cpu.get('server.sys', 0) / max(self.cpu['server'], 1e-9):.0f}% kernel)")
        extra = ""
        if self.non202_total:
            extra += f" non-202={dict(self.non202_total)}"
        if self.errors_total:
            extra += f" errors={dict(self.errors_total)}"
        if self.unsent or self.abandoned:
            extra += f" unsent={self.unsent} abandoned={self.abandoned}"
        offered = f" offered {self.offered:.0f}/s" if self.offered else ""
        return (f"  {self.name:<9} {self.mode:<4}{offered}: {self.jobs_s:7.0f} jobs/s  p50 {self.p50_ms:6.1f} ms"
                f"  p90 {self.p90_ms:6.1f}  p99 {self.p99_ms:7.1f}  max {self.max_ms:7.1f}  [{self.tool}]"
                f"  202s={self.ok_total}{extra}\n      cores: {cpu}")


def _spawn_generators(port: int, requests: list[bytes], args: argparse.Namespace, rate: float | None,
                      connections: int) -> list[tuple[Any, Any]]:
    procs = max(1, args.loadgen_procs)
    ctx = mp.get_context("spawn")
    children = []
    for k in range(procs):
        share = connections // procs + (1 if k < connections % procs else 0)
        cfg = {
            "port": port, "requests": requests[k:] + requests[:k], "connections": max(1, share),
            "rate": (rate / procs) if rate else None, "warmup": args.warmup, "duration": args.duration,
        }
        parent_end, child_end = ctx.Pipe()
        proc = ctx.Process(target=loadgen_main, args=(cfg, child_end), daemon=True)
        proc.start()
        children.append((proc, parent_end))
    return children


def _receive(ctl: Any, timeout: float, what: str) -> Any:
    if not ctl.poll(max(1.0, timeout)):
        raise RuntimeError(f"load generator: no {what} in {timeout:.0f} s")
    return ctl.recv()


def _finish_profiler(profiler: subprocess.Popen[bytes] | None) -> None:
    if profiler is None:
        return
    try:
        _, err = profiler.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        profiler.kill()
        _, err = profiler.communicate()
    if profiler.returncode:
        print(f"  py-spy exited {profiler.returncode}: {err.decode(errors='replace')[-400:]}")


def _aggregate(res: PhaseResult, results: list[dict[str, Any]]) -> PhaseResult:
    latencies: list[float] = []
    for r in results:
        lat = array.array("d")
        lat.frombytes(r["latencies"])
        latencies.extend(lat)
        res.jobs_s += r["window_ok"] / res.duration
        res.ok_total += r["statuses"].get(202, 0)
        res.non202_total.update({s: n for s, n in r["statuses"].items() if s != 202})
        res.errors_total.update(r["errors"])
        res.unsent += r["unsent"]
        res.abandoned += r["abandoned"]
    latencies.sort()
    res.p50_ms, res.p90_ms, res.p99_ms = (percentile(latencies, p) * 1000 for p in (50, 90, 99))
    res.max_ms = latencies[-1] * 1000 if latencies else math.nan
    return res


def run_python_phase(name: str, port: int, requests: list[bytes], args: argparse.Namespace, *, rate: float | None,
                     connections: int, server_pid: int, profile_cmd: list[str] | None = None) -> PhaseResult:
    """One phase with the Python generator: closed loop (``rate=None``) or paced at ``rate`` jobs/s."""
    children = _spawn_generators(port, requests, args, rate, connections)
    try:
        for _, ctl in children:
            msg = _receive(ctl, 60, "connections")
            if msg != "ready":
                raise RuntimeError(f"load generator failed: {msg}")
        roles = {server_pid: "server", os.getpid(): "orchestrator"}
        roles.update({p.pid: "loadgen" for p, _ in children if p.pid is not None})
        t0 = time.time() + 0.3
        for _, ctl in children:
            ctl.send(t0)
        time.sleep(max(0.0, t0 + args.warmup - time.time()))
        profiler = None
        if profile_cmd:
            profiler = subprocess.Popen(profile_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        snap0 = cpu_snapshot(roles, args.dbname)
        time.sleep(max(0.0, t0 + args.warmup + args.duration - time.time()))
        snap1 = cpu_snapshot(roles, args.dbname)
        results = []
        limit = time.monotonic() + DRAIN_S + REQUEST_TIMEOUT_S + 30
        for _, ctl in children:
            kind, payload = _receive(ctl, limit - time.monotonic(), "result")
            if kind != "result":
                raise RuntimeError(f"load generator failed: {payload}")
            results.append(payload)
        _finish_profiler(profiler)
    finally:
        for proc, _ in children:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
    res = PhaseResult(name=name, mode="rate" if rate else "max", offered=rate, duration=args.duration)
    res.cpu = cpu_cores(snap0, snap1)
    return _aggregate(res, results)


def run_wrk_phase(name: str, port: int, key: str, body: bytes, ctype: str, args: argparse.Namespace,
                  tmp: Path, server_pid: int) -> PhaseResult:
    wrk = shutil.which("wrk")
    assert wrk is not None
    body_path = tmp / "body.bin"
    body_path.write_bytes(body)
    script = tmp / "post.lua"
    script.write_text(WRK_LUA % {"ctype": ctype, "key": key, "body": str(body_path)})
    url = f"http://127.0.0.1:{port}/v1/jobs"
    base = [wrk, "-t2", f"-c{args.connections}", "--latency", "-s", str(script), url]
    # warm-up run, then the measured run; only the measured run's figures count
    warm = subprocess.run([*base[:3], f"-d{max(1, int(args.warmup))}s", *base[3:]], capture_output=True,
                          timeout=args.warmup + 60)
    roles = {server_pid: "server"}
    proc = subprocess.Popen([*base[:3], f"-d{int(args.duration)}s", *base[3:]], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    roles[proc.pid] = "loadgen"
    snap0 = cpu_snapshot(roles, args.dbname)
    out, _ = proc.communicate(timeout=args.duration + 60)
    snap1 = cpu_snapshot(roles, args.dbname)
    res = PhaseResult(name=name, mode="max", offered=None, duration=args.duration, tool="wrk")
    for text in (warm.stdout.decode(), out.decode()):
        m = re.search(r"WRKJSON (\{.*\})", text)
        if not m:
            raise RuntimeError(f"wrk output not understood:\n{text[-2000:]}")
        data = json.loads(m.group(1))
        # wrk counts non-2xx/3xx as status errors; it cannot single out 202 from other 2xx
        ok = data["requests"] - data["status"]
        res.ok_total += ok
        if data["status"]:
            res.non202_total[0] += data["status"]
        for kind in ("connect", "read", "write", "timeout"):
            if data[kind]:
                res.errors_total[kind] += data[kind]
    res.jobs_s = (data["requests"] - data["status"]) / (data["duration_us"] / 1e6)
    res.p50_ms, res.p99_ms, res.max_ms = data["p50_us"] / 1000, data["p99_us"] / 1000, data["max_us"] / 1000
    res.cpu = cpu_cores(snap0, snap1)
    return res


def summarize_pyspy(path: Path, top: int = 25) -> None:
    """Top functions of a ``py-spy record --format raw`` file, by own and inclusive samples."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)$", ")", fr) for fr in stack.split(";")]
        frames = [re.sub(r"\(/.*?/site-packages/", "(", fr) for fr in frames]
        frames = [fr.replace(f"({REPO}/", "(") for fr in frames]
        own[frames[-1]] += n
        for fr in set(frames):
            incl[fr] += n
    if not total:
        print("  (no samples)")
        return
    print(f"  {total} samples (non-idle). Top by own samples:")
    for fr, n in own.most_common(top):
        print(f"    {100 * n / total:5.1f}%  {fr}")
    print("  Top by inclusive samples:")
    for fr, n in incl.most_common(top + 15):
        print(f"    {100 * n / total:5.1f}%  {fr}")


# --- the benchmark ----------------------------------------------------------------------------------

def scalar(dsn: str, sql: str) -> int:
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


class Benchmark:
    """One run: throwaway database and Redis namespace, the two servers, their phases, the checks."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        tag = uuid.uuid4().hex[:10]
        self.dbname = args.dbname = f"medparse_bench_{tag}"
        self.namespace = f"mpbench-accept-{tag}"
        self.tmp = Path(tempfile.mkdtemp(prefix="medparse-bench-"))
        self.db_sync = args.pg_admin_url.rsplit("/", 1)[0] + f"/{self.dbname}"
        self.db_async = self.db_sync.replace("postgresql://", "postgresql+asyncpg://", 1)
        self.servers: list[subprocess.Popen[bytes]] = []
        self.created = False
        self.results: dict[str, PhaseResult] = {}
        self.counts: dict[str, tuple[int, int, int]] = {}  # name -> (rows, 202s counted, outcome unknown)
        self.queued: dict[str, tuple[int, int]] = {}  # name -> (ids in Redis, 202s counted)
        self.use_wrk = shutil.which("wrk") is not None and not args.no_wrk
        self.env: dict[str, str] = {}
        self.keys: list[str] = []
        self.body = b""
        self.ctype = ""

    # -- set-up and clean-up ----------------------------------------------------------------------
    def setup(self) -> None:
        import psycopg

        from medparse.settings import Settings
        from runtime.cli import create_tenant
        from runtime.migrate import upgrade

        args = self.args
        with psycopg.connect(args.pg_admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.dbname}"')
        self.created = True
        settings = Settings(database_url=self.db_async, redis_url=args.redis_url, redis_namespace=self.namespace,
                            data_dir=self.tmp / "var")
        upgrade(settings)
        self.keys = [create_tenant(settings, f"bench-{i}")[1] for i in range(args.tenants)]
        png, sigma = ct_like_png(args.image_kb * 1000)
        self.body, self.ctype = multipart_body(png, PROMPTS)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MEDPARSE_")}
        self.env.update(
            MEDPARSE_DATA_DIR=str(self.tmp / "var"), MEDPARSE_DATABASE_URL=self.db_async,
            MEDPARSE_REDIS_URL=args.redis_url, MEDPARSE_REDIS_NAMESPACE=self.namespace, MEDPARSE_HOST="127.0.0.1",
            MEDPARSE_LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1",
        )
        if not args.default_quotas:
            # Capacity, not policy, is measured: lift the per-tenant request rate and queue caps.
            self.env.update(QUOTA_ENV)
        self.env.update(dict(item.split("=", 1) for item in args.gateway_env))
        print(f"database {self.dbname}, redis namespace {self.namespace}")
        print(f"upload: 256x256 8-bit grayscale PNG, {len(png):,} bytes (noise sigma {sigma:.1f}); "
              f"multipart body {len(self.body):,} bytes; prompts {PROMPTS!r}")
        print(f"load: warm-up {args.warmup:g} s + {args.duration:g} s measured per phase; max phase "
              f"{args.connections} connections ({'wrk' if self.use_wrk else 'python generator'}); paced phase "
              f"{args.rate:g} jobs/s over up to {args.rate_connections} connections; "
              f"{args.loadgen_procs} generator process(es)")

    def cleanup(self) -> None:
        import psycopg
        import redis

        for proc in self.servers:
            stop_process(proc)
        if self.created:
            try:
                with psycopg.connect(self.args.pg_admin_url, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')
            except Exception as exc:  # report, keep cleaning up
                print(f"WARNING: could not drop database {self.dbname}: {exc}")
        try:
            client = redis.Redis.from_url(self.args.redis_url)
            keys = list(client.scan_iter(match=f"{self.namespace}*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()
        except Exception as exc:
            print(f"WARNING: could not delete redis keys {self.namespace}*: {exc}")
        if self.args.keep_logs:
            print(f"logs kept in {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- servers and phases -----------------------------------------------------------------------
    def start_server(self, name: str, cmd: list[str], port: int) -> subprocess.Popen[bytes]:
        with (self.tmp / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(cmd, env={**self.env, "MEDPARSE_PORT": str(port)}, cwd=REPO, stdout=log,
                                    stderr=subprocess.STDOUT)
        self.servers.append(proc)
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        status, reply = smoke_post(port, raw_request(port, self.keys[0], self.body, self.ctype))
        print(f"{name} pid {proc.pid} on :{port}; smoke POST -> {status} {reply[:120].decode(errors='replace')}")
        if status != 202:
            raise RuntimeError(f"the {name} did not accept the smoke-test job")
        return proc

    def load(self, name: str, port: int, pid: int) -> None:
        """The max phase, then the paced phase if the max reaches the offered rate."""
        args = self.args
        req = [raw_request(port, key, self.body, self.ctype) for key in self.keys]
        if self.use_wrk:  # one tenant only: wrk sends one fixed request
            r = run_wrk_phase(name, port, self.keys[0], self.body, self.ctype, args, self.tmp, pid)
        else:
            r = run_python_phase(name, port, req, args, rate=None, connections=args.connections, server_pid=pid)
        self.results[f"{name} max"] = r
        print(r.line(), flush=True)
        if r.jobs_s >= args.rate * 0.9 or args.always_rate:
            r = run_python_phase(name, port, req, args, rate=args.rate, connections=args.rate_connections,
                                 server_pid=pid)
            self.results[f"{name} rate"] = r
            print(r.line(), flush=True)
        else:
            print(f"  {name:<9} rate: skipped, the maximum is below {args.rate:g} jobs/s (--always-rate runs it)")

    def profile(self, port: int, pid: int) -> None:
        args = self.args
        pyspy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
        if pyspy is None:
            print("  --profile: py-spy not found (pip install py-spy)")
            return
        out = self.tmp / "gateway.pyspy.txt"
        cmd = [pyspy, "record", "--pid", str(pid), "--duration", str(int(args.duration)),
               "--rate", "250", "--nonblocking", "--format", "raw", "--output", str(out)]
        if args.profile_gil:
            cmd.append("--gil")  # only the thread holding the GIL: CPU in Python, not syscalls
        req = [raw_request(port, key, self.body, self.ctype) for key in self.keys]
        r = run_python_phase("gateway", port, req, args, rate=None, connections=args.connections,
                             server_pid=pid, profile_cmd=cmd)
        r.tool = "python+py-spy"
        self.results["gateway profiled"] = r
        print(r.line(), flush=True)
        if out.exists():
            summarize_pyspy(out)
            if args.profile_out:
                shutil.copy(out, args.profile_out)

    def accepted(self, prefix: str) -> int:
        """202s of all phases of one server, plus its smoke-test job."""
        return 1 + sum(v.ok_total for k, v in self.results.items() if k.startswith(prefix))

    def run_gateway(self) -> None:
        import redis

        port = free_port()
        cmd = (shlex.split(self.args.gateway_cmd) if self.args.gateway_cmd
               else [sys.executable, "-m", "runtime.cli", "serve"])
        gateway = self.start_server("gateway", cmd, port)
        print("\nphases:")
        self.load("gateway", port, gateway.pid)
        if self.args.profile:
            self.profile(port, gateway.pid)
        expected = self.accepted("gateway")
        client = redis.Redis.from_url(self.args.redis_url)
        queue_key = f"{self.namespace}:segmentation"
        deadline = time.monotonic() + 10  # a publisher may send in batches after the commit
        last = -1
        while time.monotonic() < deadline and last != (now := client.llen(queue_key)) and now < expected:
            last = now
            time.sleep(0.5)
        stop_process(gateway)
        self.queued["gateway"] = (int(client.llen(queue_key)), expected)
        client.close()
        rows = scalar(self.db_sync, "SELECT count(*) FROM jobs")
        inputs = scalar(self.db_sync, "SELECT count(*) FROM job_inputs")
        self.counts["gateway"] = (rows, expected, unknown_outcomes(self.results, "gateway"))
        if inputs != rows:
            print(f"  WARNING: {rows} job rows but {inputs} job_inputs rows")
        lines = (self.tmp / "gateway.log").read_text(errors="replace").strip().splitlines()
        if len(lines) > 1:
            print(f"  gateway log: {len(lines)} line(s); last ones:")
            for line in lines[-5:]:
                print(f"    {line[:200]}")

    def run_baseline(self) -> None:
        import psycopg
        import redis

        with psycopg.connect(self.db_sync, autocommit=True) as conn:
            conn.execute(
                f"CREATE TABLE {BASELINE_TABLE} (id uuid PRIMARY KEY, prompts text NOT NULL, "
                "image bytea NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
            )
        port = free_port()
        list_key = f"{self.namespace}:baseline"
        cmd = [sys.executable, "-m", "bench.accept", "--serve-baseline", "--port", str(port),
               "--dsn", self.db_sync, "--redis-url", self.args.redis_url, "--redis-key", list_key]
        baseline = self.start_server("baseline", cmd, port)
        self.load("baseline", port, baseline.pid)
        stop_process(baseline)
        expected = self.accepted("baseline")
        rows = scalar(self.db_sync, f"SELECT count(*) FROM {BASELINE_TABLE}")
        self.counts["baseline"] = (rows, expected, unknown_outcomes(self.results, "baseline"))
        client = redis.Redis.from_url(self.args.redis_url)
        self.queued["baseline"] = (int(client.llen(list_key)), expected)
        client.close()


def run_benchmark(args: argparse.Namespace) -> int:
    snap0 = cpu_snapshot({os.getpid(): "orchestrator"})
    time.sleep(1.0)
    busy = cpu_cores(snap0, cpu_snapshot({os.getpid(): "orchestrator"}))["total"]
    print(f"machine: {os.cpu_count()} CPUs, {busy:.2f} cores busy before the benchmark"
          + ("  ** WARNING: other load on the box; figures will be low and noisy **" if busy > 0.15 else ""))
    bench = Benchmark(args)
    try:
        bench.setup()
        bench.run_gateway()
        if not args.skip_baseline:
            bench.run_baseline()
        return report(bench.results, bench.counts, bench.queued, args)
    finally:
        bench.cleanup()


def unknown_outcomes(results: dict[str, PhaseResult], prefix: str) -> int:
    """Requests sent whose reply never came (timeouts, resets, abandoned at the end of a paced phase)."""
    return sum(r.abandoned + sum(r.errors_total.values()) for k, r in results.items() if k.startswith(prefix))


def report(results: dict[str, PhaseResult], counts: dict[str, tuple[int, int, int]],
           queued: dict[str, tuple[int, int]], args: argparse.Namespace) -> int:
    def fmt(v: float, unit: str = "") -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:,.1f}{unit}"

    gmax, grate = results.get("gateway max"), results.get("gateway rate")
    bmax, brate = results.get("baseline max"), results.get("baseline rate")
    print("\n" + "=" * 86)
    print(f"{'':<22}{'max jobs/s':>12}{'p50 ms':>9}{'p99 ms':>9}   |{f'at {args.rate:g}/s offered:':>22}"
          f"{'p50 ms':>8}{'p99 ms':>9}")
    for label, mx, rt in (("gateway", gmax, grate), ("baseline (raw aiohttp)", bmax, brate)):
        if mx is None:
            continue
        rate_cols = (f"{fmt(rt.jobs_s):>22}{fmt(rt.p50_ms):>8}{fmt(rt.p99_ms):>9}" if rt
                     else f"{'skipped':>22}{'':>8}{'':>9}")
        print(f"{label:<22}{fmt(mx.jobs_s):>12}{fmt(mx.p50_ms):>9}{fmt(mx.p99_ms):>9}   |{rate_cols}")
    ratio = (gmax.jobs_s / bmax.jobs_s) if gmax and bmax and bmax.jobs_s else math.nan
    print(f"ratio gateway/baseline (max jobs/s): {'n/a' if math.isnan(ratio) else f'{ratio:.2f}'}")
    print("-" * 86)
    checks: list[tuple[str, bool | None, str]] = []
    checks.append((f"gateway max >= {TARGET_JOBS_S:,.0f} jobs/s", gmax is not None and gmax.jobs_s >= TARGET_JOBS_S,
                   fmt(gmax.jobs_s if gmax else math.nan, " jobs/s")))
    p99_ok = (grate is not None and grate.p99_ms <= TARGET_P99_MS and grate.jobs_s >= 0.95 * args.rate
              and not grate.unsent)
    checks.append((f"gateway p99 <= {TARGET_P99_MS:g} ms at {args.rate:g} jobs/s offered", p99_ok,
                   f"{fmt(grate.p99_ms, ' ms')} (achieved {fmt(grate.jobs_s, ' jobs/s')})" if grate
                   else "not run: maximum below the offered rate"))
    if args.skip_baseline:
        checks.append((f"ratio gateway/baseline >= {TARGET_RATIO:g}", None, "baseline skipped"))
    else:
        checks.append((f"ratio gateway/baseline >= {TARGET_RATIO:g}", ratio >= TARGET_RATIO, f"{ratio:.2f}"))
    for name, (rows, ok, unknown) in counts.items():
        # every 202 must have its row; a request whose reply never arrived may or may not have one
        detail = f"{rows:,} rows / {ok:,} 202s, {max(0, ok - rows):,} lost"
        if unknown:
            detail += f" ({unknown:,} request(s) without a reply may add rows)"
        checks.append((f"{name}: no lost jobs (rows in Postgres vs 202s)", ok <= rows <= ok + unknown, detail))
    for name, (ids, ok) in queued.items():
        checks.append((f"{name}: messages in its Redis list (info)", None, f"{ids:,} / {ok:,} 202s"))
    for name, passed, detail in checks:
        verdict = "info" if passed is None else ("PASS" if passed else "FAIL")
        print(f"  [{verdict}] {name}: {detail}")
    for label, r in results.items():
        if r.non202_total or r.errors_total or r.unsent or r.abandoned:
            print(f"  note: {label}: non-202 {dict(r.non202_total)}, no reply {dict(r.errors_total)}, "
                  f"unsent {r.unsent}, abandoned {r.abandoned}")
    print("=" * 86)
    failed = any(p is False for _, p, _ in checks)
    return 1 if (failed and args.check) else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--duration", type=float, default=12.0, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds before each measured window")
    p.add_argument("--connections", type=int, default=64, help="connections of the max-throughput phase")
    p.add_argument("--rate", type=float, default=1000.0, help="offered jobs/s of the paced phase")
    p.add_argument("--rate-connections", type=int, default=64, help="connection cap of the paced phase")
    p.add_argument("--loadgen-procs", type=int, default=1, help="load-generator processes")
    p.add_argument("--image-kb", type=int, default=40, help="target PNG size in kB")
    p.add_argument("--tenants", type=int, default=1, help="tenants (API keys) the connections are spread over")
    p.add_argument("--default-quotas", action="store_true",
                   help="keep the gateway's per-tenant rate/queue limits (429s are then counted as non-202)")
    p.add_argument("--always-rate", action="store_true", help="run the paced phase even below the rate")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--no-wrk", action="store_true", help="use the Python generator even if wrk is installed")
    p.add_argument("--profile", action="store_true", help="extra gateway phase under py-spy record")
    p.add_argument("--profile-out", type=Path, default=None, help="copy the raw py-spy profile here")
    p.add_argument("--profile-gil", action="store_true", help="py-spy --gil: sample only the GIL holder")
    p.add_argument("--keep-logs", action="store_true", help="keep the temp folder with the server logs")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--gateway-cmd", default=None,
                   help="command line that starts the gateway instead of 'python -m runtime.cli serve' "
                        "(same MEDPARSE_* environment), e.g. to try a patched build")
    p.add_argument("--gateway-env", action="append", default=[], metavar="MEDPARSE_X=VALUE",
                   help="extra setting for the gateway (repeatable), e.g. MEDPARSE_SUBMIT_BATCH_CONCURRENCY=1")
    p.add_argument("--pg-admin-url", default=PG_ADMIN_URL)
    p.add_argument("--redis-url", default=REDIS_URL)
    # internal: the baseline server
    p.add_argument("--serve-baseline", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--dsn", default="", help=argparse.SUPPRESS)
    p.add_argument("--redis-key", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for url in (args.pg_admin_url, args.redis_url):
        if "@127.0.0.1:" not in url and "//127.0.0.1:" not in url:
            p.error(f"only 127.0.0.1 is allowed: {url}")
    if args.duration <= 0 or args.warmup < 0 or args.connections < 1 or args.rate <= 0 or args.tenants < 1:
        p.error("need --duration > 0, --warmup >= 0, --connections >= 1, --rate > 0, --tenants >= 1")
    return args


def _sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    args = parse_args()
    if args.serve_baseline:
        serve_baseline(args)
        return
    signal.signal(signal.SIGTERM, _sigterm)
    random.seed()
    sys.exit(run_benchmark(args))


if __name__ == "__main__":
    main()
