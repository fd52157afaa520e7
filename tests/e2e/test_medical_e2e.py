"""A DICOM, a NIfTI volume and a 3-D model job through real processes: gateway, Celery worker, emulator."""

from __future__ import annotations

import gzip
import io
import json
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np
import pydicom
import pytest

from medparse.settings import Settings
from tests.support import medical_files as mf
from tests.support.factories import new_tenant
from tests.support.processes import emulator_process, service_processes

pytestmark = pytest.mark.e2e


def _submit(http: httpx.Client, image: bytes, prompts: str, options: dict[str, Any]) -> str:
    resp = http.post(
        "/v1/jobs", files={"image": ("upload", image, "application/octet-stream")},
        data={"prompts": prompts, "options": json.dumps(options)},
    )
    assert resp.status_code == 202, resp.text
    return str(resp.headers["Location"])


def _wait(http: httpx.Client, location: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    job = http.get(location).json()
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        job = http.get(location, headers={"Prefer": "wait=10"}).json()
    assert job["status"] == "succeeded", job
    return job  # type: ignore[no-any-return]


def test_medical_jobs_end_to_end_on_postgres_and_redis(pg_settings: Settings, tmp_path: Path) -> None:
    _, key = new_tenant(pg_settings)
    emulator_key = secrets.token_urlsafe(16)
    with emulator_process(tmp_path, emulator_key) as emulator, service_processes(
        pg_settings, emulator, emulator_key, tmp_path
    ) as base, httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        ct = _submit(http, mf.dicom_file("CT_small.dcm"), "liver & tumor", {"modality": "ct", "window": "abdomen"})
        volume_upload = mf.synthetic_ct_volume((48, 40, 6))
        volume = _submit(http, volume_upload, "liver", {"window": "liver"})
        model_3d = _submit(http, mf.nifti_file("anatomical.nii"), "brain", {"model": "medimageparse-3d"})

        ct_job = _wait(http, ct)
        seg = pydicom.dcmread(io.BytesIO(http.get(ct_job["result"]["formats"]["dicom-seg"]).content))
        source = pydicom.dcmread(io.BytesIO(mf.dicom_file("CT_small.dcm")))
        assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == (
            source.SOPInstanceUID
        )

        volume_job = _wait(http, volume)
        assert volume_job["progress"] == {"done": 6, "total": 6}
        labels = nib.Nifti1Image.from_bytes(gzip.decompress(http.get(volume_job["result"]["formats"]["nifti"]).content))
        assert labels.shape == (48, 40, 6)
        assert np.allclose(labels.affine, nib.Nifti1Image.from_bytes(gzip.decompress(volume_upload)).affine)
        assert volume_job["result"]["masks"][0]["area_px"] == int(np.count_nonzero(np.asarray(labels.dataobj)))

        job_3d = _wait(http, model_3d)
        assert job_3d["result"]["provenance"]["model"] == "medimageparse-3d"
        npz = np.load(io.BytesIO(http.get(job_3d["result"]["npz_url"]).content))
        assert npz["masks"].shape == (1, 33, 41, 25)
