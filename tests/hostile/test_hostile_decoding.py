"""Decodes that are legal by their headers but heavy, against the production shape (stack.py): they run
in the decode processes (medparse/decode_pool.py), at most ``decode_processes`` at once per gateway
process, each within ``decode_memory_limit_bytes`` and ``decode_timeout_s``.

Before issue 12: 10 concurrent ~400 KB .nii.gz uploads of a 368^3 float64 zero volume took 22-42 s each
to accept with 4.7 GB and 1.7 GB in the two gateway processes, /healthz up to 5.3 s (2 probes failed),
and another tenant's job was not done 120 s later; overlays and NIfTI results decoded whole volumes in
gateway threads, one per request.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.support import medical_files as mf
from tests.support.stack import HealthWatch, Stack, descendants_of, peak_rss_mb, rss_mb

MiB = 1024 * 1024
#: A gateway process's peak RSS may grow this much over an attack: it holds the uploads (or the rendered
#: bodies) of the requests in flight, never a decoded volume (before: 1.7-4.7 GB).
MAX_GATEWAY_GROWTH_MB = 150
#: A decode process's baseline RSS (numpy, OpenCV, pydicom, nibabel imported) is ~150 MB.
DECODE_BASELINE_MB = 200


def _gateway_peaks(stack: Stack) -> dict[int, float]:
    return {pid: peak_rss_mb(pid) for pid in stack.gateway_pids()}


def _helper_peaks(stack: Stack) -> dict[int, float]:
    """Peak RSS of the processes the gateway processes started (fork servers, decode processes)."""
    return {pid: peak_rss_mb(pid) for gateway in stack.gateway_pids() for pid in descendants_of(gateway)}


class HelperSampler:
    """Samples the RSS of every process the gateway processes started, every 50 ms, on a thread: a decode
    process stopped at its limit is gone before its VmHWM can be read. The process tree (a scan of /proc)
    is re-read every 0.2 s only, so that the sampler does not take the GIL from HealthWatch."""

    def __init__(self, stack: Stack) -> None:
        self._stack = stack
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        gateways = self._stack.gateway_pids()
        helpers: list[int] = []
        rounds = 0
        while not self._stop.wait(0.05):
            if rounds % 4 == 0:
                helpers = [p for gateway in gateways for p in descendants_of(gateway)]
            rounds += 1
            for pid in helpers:
                self.peak_mb = max(self.peak_mb, rss_mb(pid), peak_rss_mb(pid))

    def __enter__(self) -> HelperSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _post(http: httpx.Client, data: bytes, options: dict | None = None) -> httpx.Response:
    form = {"options": json.dumps(options)} if options is not None else {}
    return http.post(
        "/v1/jobs", files={"image": ("volume.nii.gz", data, "application/octet-stream")},
        data={"prompts": "liver", **form},
    )


def _assert_refused_or_answered(resp: httpx.Response, ok: int, expected: set[str]) -> str:
    if resp.status_code == ok:
        return str(ok)
    problem = resp.json()
    assert problem["code"] in expected, (resp.status_code, resp.text[:300])
    if resp.status_code == 503:
        assert int(resp.headers["Retry-After"]) >= 1
    else:
        assert resp.status_code == 422 and problem["fields"][0]["field"] == "image", problem
    return f"{resp.status_code} {problem['code']}"


def test_ten_concurrent_heavy_nifti_uploads_are_bounded(make_stack: Callable[..., Stack]) -> None:
    """The issue's case: ten 368^3 float64 zero volumes (~400 KB each, 400 MB decoded) at once. With a
    256 MiB decode budget each decode stops at its limit (422 image_too_complex) or finds no free decode
    process in time (503): the gateway processes stay small and alive, /healthz answers, and another
    tenant's job completes."""
    limit = 256 * MiB
    stack = make_stack(MEDPARSE_DECODE_MEMORY_LIMIT_BYTES=str(limit), MEDPARSE_DECODE_QUEUE_WAIT_S="5")
    attacker = stack.new_tenant()
    upload = mf.nifti_zero_volume_gz((368, 368, 368))
    assert len(upload) < 500 * 1024
    stack.check_other_tenant_completes()  # warm: every process has imported and served once
    with stack.client(attacker) as http:  # and the decode processes (new connections reach both gateways)
        for _ in range(4):
            warm = _post(http, mf.synthetic_ct_volume((48, 40, 6)))
            assert warm.status_code == 202, warm.text
            http.headers["Connection"] = "close"
    gateways, before = stack.gateway_pids(), _gateway_peaks(stack)
    began = time.monotonic()
    # One client for all the attack's requests: creating one per request costs the test process (and so
    # the HealthWatch thread beside them) an SSL context each.
    with stack.client(attacker, timeout=120) as http, HealthWatch(stack.base_url) as watch, \
            HelperSampler(stack) as sampled, ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: _post(http, upload, {"model": "medimageparse-3d"}), range(10)))
        job = stack.check_other_tenant_completes()
    elapsed = time.monotonic() - began
    outcomes = sorted(_assert_refused_or_answered(r, 202, {"image_too_complex", "decode_busy"}) for r in answers)
    assert "422 image_too_complex" in outcomes, outcomes
    watch.assert_healthy(limit_s=1.0)
    stack.assert_gateway_alive()
    assert stack.gateway_pids() == gateways, "a gateway process was replaced"
    assert job["status"] == "succeeded"
    after = _gateway_peaks(stack)
    assert max(after[pid] - before[pid] for pid in gateways) < MAX_GATEWAY_GROWTH_MB, (before, after)
    for resp in answers:
        if resp.status_code == 422:
            assert "decode_memory_limit_bytes" in resp.json()["detail"], resp.text
    assert 0 < sampled.peak_mb < DECODE_BASELINE_MB + limit / MiB, sampled.peak_mb
    print(f"\n10 x 368^3 f8 .nii.gz: {outcomes} in {elapsed:.1f} s; /healthz max {watch.max_latency_s:.3f} s; "
          f"gateway peak {before} -> {after} MiB; decode processes' sampled peak {sampled.peak_mb:.0f} MiB")


def test_many_concurrent_renderings_of_a_big_volume_are_bounded(make_stack: Callable[..., Stack]) -> None:
    """Overlays decode the whole input volume again and NIfTI/NPZ results build whole label volumes: 16 at
    once run at most two at a time per gateway process, in the decode processes."""
    stack = make_stack(MEDPARSE_DECODE_QUEUE_WAIT_S="20")
    owner = stack.new_tenant()
    upload = mf.nifti_zero_volume_gz((256, 256, 128))  # 64 MB of float64 voxels
    with stack.client(owner, timeout=120) as http:
        resp = _post(http, upload, {"slices": [0, 1]})
    assert resp.status_code == 202, resp.text
    job = stack.wait_done(owner, resp.json()["id"], timeout=90)
    assert job["status"] == "succeeded", job
    gateways, before = stack.gateway_pids(), _gateway_peaks(stack)
    url = f"{job['urls']['get']}/result?format="

    formats = ["overlay", "nifti", "npz", "overlay&slice=1"] * 4
    began = time.monotonic()
    with stack.client(owner, timeout=120) as http, HealthWatch(stack.base_url) as watch, \
            ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda fmt: http.get(url + fmt), formats))
        other = stack.check_other_tenant_completes()
    elapsed = time.monotonic() - began
    outcomes = sorted(_assert_refused_or_answered(r, 200, {"decode_busy"}) for r in answers)
    assert outcomes.count("200") >= 4, outcomes
    watch.assert_healthy(limit_s=1.0)
    stack.assert_gateway_alive()
    assert stack.gateway_pids() == gateways, "a gateway process was replaced"
    assert other["status"] == "succeeded"
    after = _gateway_peaks(stack)
    assert max(after[pid] - before[pid] for pid in gateways) < MAX_GATEWAY_GROWTH_MB, (before, after)
    print(f"\n16 renderings of a 256x256x128 f8 volume: {outcomes} in {elapsed:.1f} s; /healthz max "
          f"{watch.max_latency_s:.3f} s; gateway peak {before} -> {after} MiB; decode processes' peaks "
          f"{_helper_peaks(stack)} MiB")
