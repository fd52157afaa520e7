"""Regressions found reviewing the trust boundary for untrusted files (issue 12): small uploads whose
checks cost far more than their size on the gateway's event loop; a result whose input the gateway
reads again under other limits than the probe and the worker did."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import struct
import threading
import time
import uuid
import warnings
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from db.job_record import JOB_FIELDS, Job, MaskSummary, StoredMask
from gateway.errors import DomainError
from gateway.http.problems import problem_of
from gateway.jobs import medical, services
from gateway.keys import DEPS
from gateway.results import handlers as results
from gateway.results import render
from gateway.results import services as result_services
from medparse import masks
from medparse.decode_pool import DecodeLimits, DecodePool, decodes_inline
from medparse.imaging import ImageRejected
from medparse.settings import Settings
from tests.support import decode_calls as calls
from tests.support import medical_files as mf
from tests.support.factories import organ_image

SETTINGS = Settings()
MiB = 1024 * 1024


def text_chunks(count: int, inflated: int = MiB) -> bytes:
    """``count`` zTXt chunks of ~1 kB, each inflating to ``inflated`` bytes (Pillow's per-chunk cap: 1 MB)."""
    return b"".join(mf._png_chunk(b"zTXt", b"Comment\0\0" + mf._zeros_deflate(inflated)) for _ in range(count))


def test_a_small_png_whose_text_chunks_inflate_far_is_not_checked_on_the_event_loop() -> None:
    # 80 kB, 63 MB of text to inflate: 0.25 s of the probe on the gateway's event loop per upload.
    bomb = mf.png_zeros(64, 64, bit_depth=8, color_type=0, extra=text_chunks(63))
    assert len(bomb) < 100 * 1024
    assert not decodes_inline(bomb)
    # A usual ICC profile (a few kB compressed) and a short comment keep the fast path.
    profile = mf._png_chunk(b"iCCP", b"icc\0\0" + mf._zeros_deflate(3000))
    assert decodes_inline(mf.png_zeros(64, 64, bit_depth=8, color_type=0, extra=profile + text_chunks(1, 100)))
    assert decodes_inline(organ_image()[0])


async def test_the_header_check_of_a_small_upload_runs_off_the_event_loop(monkeypatch: Any) -> None:
    # 130 kB that inflate to 127 MiB, counted by the header check (0.1-0.3 s) before any decode process.
    deflated = mf.deflate_bomb_dicom(127 * MiB)
    assert len(deflated) < 256 * 1024 and not decodes_inline(deflated)
    loop_thread, checked_in = threading.get_ident(), []
    real_check = medical.check_headers

    def check_headers(*args: Any) -> None:
        checked_in.append(threading.get_ident())
        real_check(*args)

    class Decoder:
        async def run(self, func: Any, *args: Any, nbytes: int, party: Any) -> str:
            return "decoded"

    monkeypatch.setattr(medical, "check_headers", check_headers)
    assert await services.probe_upload(deflated, SETTINGS, Decoder(), None) == "decoded"  # type: ignore[arg-type]
    assert checked_in and loop_thread not in checked_in


# --- results: a 2-D DICOM's overlay reads its input within the settings' limits; a refusal is a 4xx --------

def dicom_job(frames: int) -> tuple[bytes, render.Loaded]:
    """A succeeded 2-D job on frame 0 of an 8x8 DICOM of ``frames`` frames, as ``load_result`` gives it."""
    image = mf.dicom_native(8, 8, frames, 8 * 8 * 2 * frames)
    mask = masks.encode_mask(np.ones((8, 8), np.uint8))
    job = Job.from_row({
        **dict.fromkeys(JOB_FIELDS), "id": uuid.uuid4(), "status": "succeeded", "options": {"frame": 0},
        "result_meta": {},
    })
    loaded = render.Loaded(
        job=job,
        summaries=[MaskSummary(index=0, prompt="liver", label="liver", area_px=64, bbox=None, height=8, width=8)],
        mask_rows=[StoredMask(index=0, height=8, width=8, encoding="packbits", data=mask)], medical=None, image=image,
    )
    return image, loaded


def test_the_overlay_of_a_dicom_reads_it_within_the_settings_limits_not_the_defaults() -> None:
    settings = SETTINGS.model_copy(update={"max_dicom_frames": 20_000})  # an operator's higher limit
    image, loaded = dicom_job(10_001)
    medical.probe(image, settings, {"frame": 0})  # accepted at submit time under these settings
    rendered = render.render(loaded, "overlay", None, None, settings)
    assert rendered.content_type == "image/png" and rendered.body.startswith(b"\x89PNG")


async def test_an_input_the_limits_now_refuse_is_a_409_problem_not_a_500(monkeypatch: Any) -> None:
    settings = SETTINGS.model_copy(update={"max_dicom_frames": 2})  # lowered after the job succeeded
    _, loaded = dicom_job(3)

    class InProcess:  # the decode pool's contract: what ``func`` raises comes back as itself
        async def run(self, func: Any, *args: Any, nbytes: int, party: Any) -> Any:
            return func(*args)

    async def load_result(*args: Any, **kwargs: Any) -> render.Loaded:
        return loaded

    monkeypatch.setattr(results, "principal", lambda request, scope: SimpleNamespace(tenant_id=uuid.uuid4()))
    monkeypatch.setattr(result_services, "load_result", load_result)
    app = web.Application()
    app[DEPS] = SimpleNamespace(settings=settings, engine=None, decode_pool=InProcess())  # type: ignore[misc]
    job_id = loaded.job.id
    request = make_mocked_request(
        "GET", f"/v1/jobs/{job_id}/result?format=overlay", match_info={"job_id": str(job_id)}, app=app
    )
    with pytest.raises(DomainError) as caught:  # problems_middleware answers it with problem_of
        await results.get_result(request)
    problem = problem_of(caught.value)
    assert problem.status == 409 and problem.code == "result_unavailable"
    assert "max_dicom_frames" in problem.detail


# --- the decode pool: a call interrupted in its caller (a soft time limit's exception) --------------------

class Interrupted(Exception):
    """What Celery's prefork pool raises in a task on its soft time limit (SoftTimeLimitExceeded, from SIGUSR1)."""


def test_a_call_interrupted_in_the_caller_never_hands_its_answer_to_the_next_call() -> None:
    pool = DecodePool(DecodeLimits(
        processes=1, memory_limit_bytes=256 * MiB, timeout_s=10.0, max_inflight_bytes=64 * MiB, max_waiting=4,
        queue_wait_s=5.0,
    ))

    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        assert pool.call(calls.echo, "warm") == "warm"
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(Interrupted):
            pool.call(calls.sleep, 0.8)  # job A's decode, still running in the child when its caller gives up
        time.sleep(0.8)  # job A's answer is in the pipe by now
        assert pool.call(calls.echo, "B") == "B"  # job B gets its own answer, not job A's
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        pool.close()


# --- no DICOM header value in the logs ---------------------------------------------------------------------

def dicom_with_invalid_values() -> tuple[bytes, bytes]:
    """(refused, accepted) DICOMs whose NumberOfFrames / Modality values are invalid for their VR."""
    ds = mf._image_dataset(8, 8, 1)
    del ds.NumberOfFrames
    body = mf._explicit_le(ds)
    frames = b"1 SECRETNAME "  # IS: digits only
    at = body.find(struct.pack("<HH", 0x0028, 0x0010))
    refused = body[:at] + struct.pack("<HH2sH", 0x0028, 0x0008, b"IS", len(frames)) + frames + body[at:]
    modality = b"secret name!"  # CS: capitals, digits, space and underscore only
    at = body.find(struct.pack("<HH", 0x0008, 0x0060))
    length = struct.unpack_from("<H", body, at + 6)[0]
    accepted = body[:at] + struct.pack("<HH2sH", 0x0008, 0x0060, b"CS", len(modality)) + modality
    accepted += body[at + 8 + length:]
    pixels = mf._element(0x7FE0, 0x0010, b"OW", 128) + b"\0" * 128
    return mf._part10(mf.EXPLICIT_LE, refused + pixels), mf._part10(mf.EXPLICIT_LE, accepted + pixels)


def test_invalid_dicom_header_values_are_never_logged_nor_warned(caplog: Any) -> None:
    refused, accepted = dicom_with_invalid_values()
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        with pytest.raises(ImageRejected):
            medical.check_headers(refused, SETTINGS, None)
        with pytest.raises(ImageRejected):
            medical.probe(refused, SETTINGS, None)
        medical.check_headers(accepted, SETTINGS, None)
        info = medical.probe(accepted, SETTINGS, None)
    assert info.details is not None and info.details["modality"] == "secret name!"  # read, not refused
    said = [record.getMessage() for record in caplog.records] + [str(w.message) for w in warned]
    assert not [line for line in said if "SECRET" in line.upper()], said


# --- NIfTI-2: 64-bit dimensions whose product wraps around -----------------------------------------------

@pytest.mark.parametrize(("shape", "options"), [
    ((4, 1, 2**62), {"slices": {"start": 0, "stop": 1}}), ((2**32, 2**32, 1), {"model": "medimageparse-3d"}),
])
@pytest.mark.parametrize("gz", [False, True])
def test_a_nifti2_declaring_2_to_the_64_voxels_is_refused_from_its_header(
    shape: tuple[int, ...], options: dict[str, Any], gz: bool
) -> None:
    # In int64 the product is 0: the header check passed it on to a decode process (a 422 corrupt_image there).
    data = mf.nifti2_declaring(shape, gz=gz)
    with pytest.raises(ImageRejected) as caught:
        medical.check_headers(data, SETTINGS, options)
    assert caught.value.code == "image_too_large"


# --- the decode's verdicts: a damaged element is a 4xx, a decode over its memory budget is not "damaged" ----

def test_a_damaged_modality_vr_is_corrupt_not_a_500() -> None:
    ds = mf._image_dataset(8, 8, 1)
    del ds.NumberOfFrames
    body = mf._explicit_le(ds)
    at = body.find(struct.pack("<HH", 0x0008, 0x0060))
    body = body[:at + 4] + b"CX" + body[at + 6:]  # Modality with a VR pydicom does not know
    data = mf._part10(mf.EXPLICIT_LE, body + mf._element(0x7FE0, 0x0010, b"OW", 128) + b"\0" * 128)
    with pytest.raises(ImageRejected) as caught:  # was NotImplementedError from the decode process: a 500
        medical.probe(data, SETTINGS, None)
    assert caught.value.code == "corrupt_image"


def test_a_decoder_out_of_memory_is_the_decode_budget_not_a_damaged_file(monkeypatch: Any) -> None:
    from medparse.medical import dicom, nifti

    def out_of_memory(*args: Any, **kwargs: Any) -> None:
        raise MemoryError("Unable to allocate 120. MiB")

    header = dicom.open_dicom(mf.multiframe_ct(3), max_pixels=SETTINGS.max_image_pixels)
    monkeypatch.setattr(dicom, "pixel_array", out_of_memory)
    with pytest.raises(MemoryError):  # the decode process answers image_too_complex (decode_memory_limit_bytes)
        dicom.decode(header, None)
    volume = mf.synthetic_ct_volume()
    parsed = nifti.parse_header(volume, max_voxels=10**8, max_bytes=10**9)
    monkeypatch.setattr(nifti.np, "asanyarray", out_of_memory)
    with pytest.raises(MemoryError):
        nifti.load(volume, parsed, frame=None)



async def test_the_error_of_a_decode_whose_request_went_away_is_not_logged(caplog: Any) -> None:
    pool = DecodePool(DecodeLimits(
        processes=1, memory_limit_bytes=256 * MiB, timeout_s=10.0, max_inflight_bytes=64 * MiB, max_waiting=4,
        queue_wait_s=5.0,
    ))
    try:
        assert await pool.run(calls.echo, "warm") == "warm"
        request = asyncio.create_task(pool.run(calls.sleep_then_reject, 0.4))
        await asyncio.sleep(0.1)
        request.cancel()  # the client went away; its decode runs on and ends in ImageRejected
        with pytest.raises(asyncio.CancelledError):
            await request
        with caplog.at_level(logging.DEBUG):
            await asyncio.sleep(0.8)
            del request
            gc.collect()
            await asyncio.sleep(0.05)
        assert await pool.run(calls.echo, "next") == "next"
    finally:
        pool.close()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage() or "SECRET" in r.getMessage()]
