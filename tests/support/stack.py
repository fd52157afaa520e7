"""A production-shape stack in real processes for attacks, and what the attacks are measured with.

``medparse serve --processes 2``, a segmentation worker and a webhook worker (threads pools), the
endpoint emulator, a throwaway Postgres database and Redis namespace; the gateway logs in as a
member of ``medparse_app`` and the workers as a member of ``medparse_system`` (never the owner or a
superuser), as in production. Each hostile test attacks it over real HTTP and
then checks what the issue asks of every attack: the answer, that ``/healthz`` kept answering
within a second (``HealthWatch``), that the gateway processes are alive or were replaced, the
peak RSS of the processes (``peak_rss_mb``, read from the kernel, not from our settings) and that
another tenant's job submitted meanwhile completes.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import make_url

from medparse.settings import Settings
from runtime.cli import create_tenant
from tests.support.factories import organ_image
from tests.support.ports import free_port
from tests.support.processes import settings_env, start, stop, wait_http
from tests.support.throwaway import throwaway_login_role

TERMINAL = ("succeeded", "failed", "canceled")
#: The stack's own defaults: quick sweeps and generous rate limits, so that what a test measures is
#: the attack, not our throttling of the test itself.
STACK_ENV = {
    "MEDPARSE_SWEEP_INTERVAL_S": "1",
    "MEDPARSE_DISPATCH_INTERVAL_S": "0.3",
    "MEDPARSE_TENANT_RATE_LIMIT_RPS": "2000",
    "MEDPARSE_TENANT_RATE_LIMIT_BURST": "4000",
    "MEDPARSE_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
}


def _status_field(pid: int, name: str) -> str | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(name + ":"):
                    return line.split(":", 1)[1].strip()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size so far (VmHWM), in MiB; 0 when it is gone."""
    value = _status_field(pid, "VmHWM")
    return int(value.split()[0]) / 1024 if value else 0.0


def rss_mb(pid: int) -> float:
    """The process's resident set size now (VmRSS), in MiB; 0 when it is gone."""
    value = _status_field(pid, "VmRSS")
    return int(value.split()[0]) / 1024 if value else 0.0


def is_alive(pid: int) -> bool:
    state = _status_field(pid, "State")
    return state is not None and not state.startswith("Z")


def children_of(pid: int) -> list[int]:
    """Live direct children of ``pid`` (scans /proc: the children file needs a kernel option)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields after its last ")" are fixed.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return sorted(found)


def descendants_of(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children_of(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


class HealthWatch:
    """Polls ``GET /healthz`` every ``interval_s`` on a thread, each on a fresh connection, and
    records every answer's latency (a refused or timed-out probe is a failure)."""

    def __init__(self, base_url: str, interval_s: float = 0.1, timeout_s: float = 5.0) -> None:
        self.base_url = base_url
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="healthwatch", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                with httpx.Client(timeout=self.timeout_s) as client:
                    status = client.get(f"{self.base_url}/healthz").status_code
                elapsed = time.monotonic() - began
                self.latencies.append(elapsed)
                if status != 200:
                    self.failures.append(f"/healthz answered {status}")
            except httpx.HTTPError as exc:
                self.latencies.append(time.monotonic() - began)
                self.failures.append(f"/healthz {type(exc).__name__}")
            self._stop.wait(self.interval_s)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.timeout_s + 1)

    @property
    def max_latency_s(self) -> float:
        return max(self.latencies, default=0.0)

    def assert_healthy(self, limit_s: float = 1.0) -> None:
        assert self.latencies, "no /healthz probe ran during the attack"
        assert not self.failures, f"/healthz failed during the attack: {self.failures[:5]}"
        assert self.max_latency_s < limit_s, (
            f"/healthz took {self.max_latency_s:.2f} s during the attack (limit {limit_s} s)"
        )


@dataclass
class Stack:
    base_url: str
    settings: Settings
    tmp: Path
    emulator_url: str
    emulator_key: str
    gateway: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def gateway_pids(self) -> list[int]:
        """The serve parent's live gateway children (not the decode helpers they may start)."""
        return children_of(self.gateway.pid)

    def all_pids(self) -> list[int]:
        """Every live process of the stack except the emulator: gateway parent, children and their
        helpers, workers and theirs."""
        pids = [self.gateway.pid, *descendants_of(self.gateway.pid)]
        for worker in self.workers:
            pids += [worker.pid, *descendants_of(worker.pid)]
        return [pid for pid in pids if is_alive(pid)]

    def new_tenant(self, name: str | None = None, scopes: Sequence[str] | None = None) -> str:
        """A new tenant with one API key (the default scopes unless ``scopes``); returns the key."""
        name = name or f"tenant-{uuid.uuid4().hex[:8]}"
        return create_tenant(self.settings, name, scopes=list(scopes) if scopes else None)[1]

    def client(self, api_key: str | None = None, timeout: float = 60.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def submit(
        self, api_key: str, image: bytes | None = None, prompts: str = "liver", filename: str = "image.png",
        headers: dict[str, str] | None = None, **form: str,
    ) -> httpx.Response:
        if image is None:
            image = organ_image(128, 96)[0]
        with self.client(api_key) as http:
            return http.post(
                "/v1/jobs", files={"image": (filename, image, "application/octet-stream")},
                data={"prompts": prompts, **form}, headers=headers or {},
            )

    def wait_done(self, api_key: str, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.client(api_key) as http:
            while True:
                job: dict[str, Any] = http.get(f"/v1/jobs/{job_id}", headers={"Prefer": "wait=5"}).json()
                if job["status"] in TERMINAL or time.monotonic() > deadline:
                    return job

    def check_other_tenant_completes(self, timeout: float = 60.0) -> dict[str, Any]:
        """A fresh tenant's small job is accepted and succeeds within ``timeout``."""
        key = self.new_tenant()
        resp = self.submit(key)
        assert resp.status_code == 202, resp.text
        job = self.wait_done(key, resp.json()["id"], timeout)
        assert job["status"] == "succeeded", job
        return job

    def assert_gateway_alive(self, expected: int = 2) -> None:
        assert self.gateway.poll() is None, "the serve parent exited"
        pids = self.gateway_pids()
        assert len(pids) == expected, f"gateway children alive: {pids} (expected {expected})"

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextlib.contextmanager
def login_roles(settings: Settings) -> Iterator[dict[str, str]]:
    """``MEDPARSE_DATABASE_URL`` values for two throwaway logins: ``app`` (a member of ``medparse_app``,
    the gateway's) and ``system`` (of ``medparse_system``, the workers'), neither a superuser nor able
    to bypass row-level security."""
    assert settings.database_url is not None
    url = make_url(settings.database_url)
    with throwaway_login_role("medparse_app") as app, throwaway_login_role("medparse_system") as system:
        yield {group: url.set(username=name, password=None).render_as_string(hide_password=False)
               for group, name in (("app", app), ("system", system))}


@contextlib.contextmanager
def running_stack(settings: Settings, tmp: Path, **env: str) -> Iterator[Stack]:
    """The whole stack for ``settings`` (a migrated throwaway database and Redis namespace); ``env``
    (extra ``MEDPARSE_*`` settings) goes to the gateway and the workers alike."""
    with login_roles(settings) as urls:
        gateway_env = {"MEDPARSE_DATABASE_URL": urls["app"], **env}
        worker_env = {"MEDPARSE_DATABASE_URL": urls["system"], "MEDPARSE_SYSTEM_DATABASE_URL": urls["system"], **env}
        with _processes(settings, tmp, gateway_env, worker_env) as stack:
            yield stack


@contextlib.contextmanager
def _processes(
    settings: Settings, tmp: Path, gateway_env: dict[str, str], worker_env: dict[str, str]
) -> Iterator[Stack]:
    emulator_key = secrets.token_urlsafe(16)
    emulator_port = free_port()
    emulator_env = {**settings_env(settings), "MEDPARSE_EMULATOR_KEY": emulator_key}
    emulator = start(["emulator", "--port", str(emulator_port)], emulator_env, tmp / "emulator.log")
    emulator_url = f"http://127.0.0.1:{emulator_port}"
    port = free_port()
    common = {
        **STACK_ENV,
        "MEDPARSE_GATEWAY_PROCESSES": "2",
        "MEDPARSE_PORT": str(port),
        "MEDPARSE_ENDPOINT_SCORING_URI": f"{emulator_url}/score",
        "MEDPARSE_ENDPOINT_KEY": emulator_key,
    }
    service_env = settings_env(settings, **{**common, **gateway_env})
    workers_env = settings_env(settings, **{**common, **worker_env})
    gateway = start(["serve"], service_env, tmp / "gateway.log")
    worker = start(["worker", "--concurrency", "4"], workers_env, tmp / "worker.log")
    webhook_worker = start(["worker", "--role", "webhooks", "--concurrency", "4"], workers_env,
                           tmp / "webhook-worker.log")
    stack = Stack(
        base_url=f"http://127.0.0.1:{port}", settings=settings, tmp=tmp, emulator_url=emulator_url,
        emulator_key=emulator_key, gateway=gateway, workers=[worker, webhook_worker],
    )
    try:
        wait_http(f"{emulator_url}/", proc=emulator)
        wait_http(f"{stack.base_url}/healthz", proc=gateway)
        deadline = time.monotonic() + 30
        while len(stack.gateway_pids()) < int(service_env["MEDPARSE_GATEWAY_PROCESSES"]):
            assert time.monotonic() < deadline, "the gateway children did not start"
            time.sleep(0.05)
        yield stack
    finally:
        stop(gateway)
        for proc in stack.workers:
            stop(proc)
        stop(emulator)
