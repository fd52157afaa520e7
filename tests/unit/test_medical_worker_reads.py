"""How often the worker reads a medical upload: one pydicom parse per DICOM job, and no work a path does not use.

The worker runs with stand-in endpoint clients (no network, no database): only the reading of the
input is under test here; tests/integration/test_medical_jobs.py runs the same jobs end to end.
"""

from __future__ import annotations

import gzip
import uuid
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pydicom
import pytest

from medparse.endpoint.protocol import RowResult, ScoreResult, ScoreRow
from medparse.medical import inputs, windowing
from medparse.medical.options import MODEL_3D
from medparse.settings import Settings
from tests.support import medical_files as mf
from workers import volume_pipeline
from workers.batching import ScoredRow
from workers.context import WorkerContext
from workers.lifecycle import Claim

SETTINGS = Settings()
JOB_ID = "00000000-0000-0000-0000-0000000000a1"
PROMPTS = ["liver", "kidney"]


def _answer(rows: list[ScoreRow], client_request_id: str | None) -> ScoreResult:
    size = SETTINGS.endpoint_image_size
    empty = RowResult(np.zeros((len(PROMPTS), size, size), np.uint8), PROMPTS)
    return ScoreResult([empty] * len(rows), client_request_id or "", None, 1, 0.0)


class _Batcher:
    def score(self, row: ScoreRow, *, job_id: str, client_request_id: str | None = None) -> ScoredRow:
        call = _answer([row], client_request_id)
        return ScoredRow(call.rows[0], call, 1)


class _Client:
    def score(self, rows: list[ScoreRow], *, job_id: str, client_request_id: str | None = None) -> ScoreResult:
        return _answer(rows, client_request_id)


class _Client3D:
    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape

    def score(self, rows: list[ScoreRow], *, job_id: str, client_request_id: str | None = None) -> ScoreResult:
        labels = np.zeros(self.shape, np.uint8)
        return ScoreResult([RowResult(labels, PROMPTS)], client_request_id or "", None, 1, 0.0)


def _context(client_3d: Any = None) -> WorkerContext:
    # decoder=None: the input is read in this process, where the counters below can see it
    context = SimpleNamespace(
        settings=SETTINGS, batcher=_Batcher(), client=_Client(), client_3d=client_3d, decoder=None,
    )
    return cast(WorkerContext, context)


def _claim(image: bytes, options: dict[str, Any]) -> Claim:
    return Claim(job_id=uuid.UUID(JOB_ID), attempt=1, prompts=PROMPTS, image=image, options=options)


def _counting(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[int]:
    """Wrap ``owner.name`` so that each call is counted; returns the counter (a one-element list)."""
    calls = [0]
    original: Callable[..., Any] = getattr(owner, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


@pytest.fixture(autouse=True)
def _progress_without_a_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(volume_pipeline.Progress, "report", lambda self, done: True)


@pytest.mark.parametrize(
    ("upload", "options"),
    [
        (lambda: mf.dicom_file("CT_small.dcm"), {"window": "abdomen"}),
        (lambda: mf.multiframe_ct(3), {"frame": 1}),
    ],
    ids=["single-frame", "one-frame-of-three"],
)
def test_a_2d_dicom_job_is_parsed_once_in_the_worker(
    monkeypatch: pytest.MonkeyPatch, upload: Callable[[], bytes], options: dict[str, Any]
) -> None:
    data = upload()
    expected_pixels, expected_source = inputs.load_2d(data, options, SETTINGS.max_image_pixels)
    parses = _counting(monkeypatch, pydicom, "dcmread")
    result = volume_pipeline.segment_job(_context(), _claim(data, options), JOB_ID)
    assert parses[0] == 1
    assert result.provenance["preprocessing"]["source"] == expected_source
    assert (result.height, result.width) == expected_pixels.shape[:2]
    assert result.medical is not None and result.medical["source_kind"] == "dicom"
    stored = pydicom.dcmread(pydicom.filebase.DicomBytesIO(result.medical["source_header"]))
    assert "PixelData" not in stored and stored.SOPInstanceUID == pydicom.dcmread(
        pydicom.filebase.DicomBytesIO(data)
    ).SOPInstanceUID


def test_a_multi_frame_dicom_volume_job_is_parsed_once_in_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    data = mf.multiframe_ct(3)  # built with pydicom, so before counting
    parses = _counting(monkeypatch, pydicom, "dcmread")
    result = volume_pipeline.segment_job(_context(), _claim(data, {"slices": [0, 2]}), JOB_ID)
    assert parses[0] == 1
    assert result.provenance["slices"] == {"axis": 0, "segmented": 2, "of": 3}
    assert result.provenance["preprocessing"]["source"]["normalization"]["scope"] == "volume"


def test_a_3d_model_job_never_computes_the_slices_intensity_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    data = mf.nifti_file("anatomical.nii")
    shape = inputs.open_volume(data, {}, inputs.Limits.from_settings(SETTINGS)).shape
    bounds = _counting(monkeypatch, windowing, "bounds_for")
    result = volume_pipeline.segment_job(_context(_Client3D(shape)), _claim(data, {"model": MODEL_3D}), JOB_ID)
    assert bounds[0] == 0
    assert result.provenance["preprocessing"]["source"]["normalization"] == {"method": "none", "by": "the model"}


def test_a_volume_makes_its_bounds_and_3d_nifti_only_when_used(monkeypatch: pytest.MonkeyPatch) -> None:
    data = mf.nifti_file("anatomical.nii")  # not gzip'd: the 3-D model gets it compressed
    bounds = _counting(monkeypatch, windowing, "bounds_for")
    compressions = _counting(monkeypatch, gzip, "compress")
    stack = inputs.open_volume(data, {"model": MODEL_3D}, inputs.Limits.from_settings(SETTINGS))
    assert (bounds[0], compressions[0]) == (0, 0)
    first, second = stack.slice_uint8(0), stack.slice_uint8(1)  # what an overlay uses
    assert first.dtype == second.dtype == np.uint8
    assert (bounds[0], compressions[0]) == (1, 0)  # one mapping for the whole volume, computed once
    assert stack.encode_nifti is not None
    assert gzip.decompress(stack.encode_nifti()) == data and compressions[0] == 1


def test_one_frame_of_an_int64_4d_nifti_goes_to_the_3d_model_in_its_own_type() -> None:
    import nibabel as nib

    volume = np.arange(8 * 6 * 4 * 2, dtype=np.int64).reshape(8, 6, 4, 2)
    data = nib.Nifti1Image(volume, np.eye(4), dtype=np.int64).to_bytes()
    stack = inputs.open_volume(data, {"model": MODEL_3D, "frame": 1}, inputs.Limits.from_settings(SETTINGS))
    assert stack.encode_nifti is not None
    sent = nib.Nifti1Image.from_bytes(gzip.decompress(stack.encode_nifti()))
    assert sent.get_data_dtype() == np.int64 and np.array_equal(np.asarray(sent.dataobj), volume[..., 1])
