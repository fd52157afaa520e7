"""The hostile uploads of issue 12, each against a fresh production-shape stack, with what they cost.

For every attack it prints the answer (status and problem code), how long the answer took, the
longest ``/healthz`` answer meanwhile (probed every 0.1 s on fresh connections), the peak RSS of the
gateway processes and of the worker (VmHWM read from the kernel: the most any of them ever held),
the peak RSS of the processes they started (the decode processes, bounded by their own limits),
whether every gateway process is still the one it was, and how long another tenant's small job took
end to end right after the attack. Run it on a checkout before and after a change to compare; the
baseline of each row is the same stack's idle peak RSS, printed first.

    .venv/bin/python -m bench.hostile [--only NAME ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from medparse.settings import Settings
from runtime.migrate import upgrade
from tests.support import medical_files as files
from tests.support.stack import HealthWatch, Stack, descendants_of, peak_rss_mb, running_stack
from tests.support.throwaway import REDIS_URL, throwaway_database, throwaway_namespace

#: The 3-D model takes a whole volume (no slice limit), so the upload is decoded in full at submit.
WHOLE_VOLUME = '{"model": "medimageparse-3d"}'
#: name -> (the upload's bytes, its file name, how many are sent at once, the job's options)
ATTACKS: dict[str, tuple[Callable[[], bytes], str, int, str | None]] = {
    "deflate-bomb-dicom": (lambda: files.deflate_bomb_dicom(), "bomb.dcm", 1, None),
    "deflate-bomb-dicom-x2": (lambda: files.deflate_bomb_dicom(), "bomb.dcm", 2, None),
    "dicom-40M-frames": (lambda: files.dicom_declaring(1, 1, 40_000_000), "frames.dcm", 1, None),
    "nifti-50M-slices": (lambda: files.nifti2_declaring((1, 1, 50_000_000)), "slices.nii", 1, None),
    "nifti-zero-368^3-f8-x10": (
        lambda: files.nifti_zero_volume_gz((368, 368, 368)), "zeros.nii.gz", 10, WHOLE_VOLUME),
}


def _post(stack: Stack, key: str, data: bytes, filename: str, options: str | None) -> tuple[int, str, float]:
    began = time.monotonic()
    form = {"prompts": "liver", **({"options": options} if options else {})}
    try:
        with stack.client(key, timeout=120) as http:
            resp = http.post("/v1/jobs", files={"image": (filename, data, "application/octet-stream")}, data=form)
        code = resp.json().get("code", resp.json().get("status", "")) if resp.content else ""
        return resp.status_code, str(code), time.monotonic() - began
    except (httpx.HTTPError, ValueError) as exc:
        return 0, type(exc).__name__, time.monotonic() - began


def run_attack(name: str, settings: Settings, tmp: Path) -> None:
    build, filename, copies, options = ATTACKS[name]
    data = build()
    with running_stack(settings, tmp) as stack:
        gateway_pids, worker_pid = stack.gateway_pids(), stack.workers[0].pid
        idle = max(peak_rss_mb(pid) for pid in gateway_pids)
        key = stack.new_tenant()
        with HealthWatch(stack.base_url) as watch, ThreadPoolExecutor(copies) as pool:
            answers = list(pool.map(lambda _: _post(stack, key, data, filename, options), range(copies)))
        gateway_peak = max(peak_rss_mb(pid) for pid in gateway_pids)
        # The processes they started (decode processes, their fork server): alive still, so measurable.
        helpers = [pid for parent in [*gateway_pids, worker_pid] for pid in descendants_of(parent)]
        helper_peak = max((peak_rss_mb(pid) for pid in helpers), default=0.0)
        same = stack.gateway_pids() == gateway_pids and stack.gateway.poll() is None
        began = time.monotonic()
        try:
            stack.check_other_tenant_completes(timeout=90)
            other = f"{time.monotonic() - began:.1f} s"
        except AssertionError as exc:
            other = f"FAILED ({str(exc)[:60]})"
        statuses = sorted({f"{status} {code}" for status, code, _ in answers})
        slowest = max(seconds for _, _, seconds in answers)
        print(
            f"{name:26} {len(data) / 1024:9.0f} KiB  x{copies:<2}  answer {', '.join(statuses):32} "
            f"in {slowest:6.2f} s  /healthz max {watch.max_latency_s:5.2f} s ({len(watch.failures)} failed)  "
            f"gateway peak {gateway_peak:7.0f} MiB (idle {idle:4.0f})  worker peak {peak_rss_mb(worker_pid):6.0f} MiB  "
            f"their helpers' peak {helper_peak:5.0f} MiB ({len(helpers)})  "
            f"gateway processes {'unchanged' if same else 'CHANGED'}  other tenant's job {other}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", choices=sorted(ATTACKS), help="run only these attacks")
    args = parser.parse_args()
    for name in args.only or list(ATTACKS):
        with tempfile.TemporaryDirectory() as tmpdir, throwaway_database() as database, \
                throwaway_namespace() as namespace:
            tmp = Path(tmpdir)
            settings = Settings(database_url=database.async_url, redis_url=REDIS_URL, redis_namespace=namespace,
                                data_dir=tmp / "var")
            upgrade(settings)
            run_attack(name, settings, tmp)


if __name__ == "__main__":
    main()
