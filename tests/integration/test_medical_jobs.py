"""DICOM and NIfTI jobs through the real API, worker task body and emulator, on Postgres and Redis.

Submitted over HTTP (the gateway's probe), run with ``run_job`` in this process (as in
test_worker_jobs.py), then every result format fetched and opened with the libraries users would
open it with (pydicom, nibabel, numpy, pycocotools).
"""

from __future__ import annotations

import gzip
import io
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import cv2
import nibabel as nib
import numpy as np
import pydicom
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr
from sqlalchemy import text

from emulator.config import EmulatorConfig
from gateway.app import create_app
from medparse.outputs import rle
from medparse.settings import Settings
from tests.support import medical_files as mf
from tests.support.emulator_server import running_emulator
from tests.support.factories import new_tenant
from workers.celery_app import make_celery
from workers.context import ContextHolder, WorkerContext
from workers.tasks import run_job

KEY = "emulator-test-key"


@pytest.fixture
def settings(pg_settings: Settings) -> Iterator[Settings]:
    with running_emulator(EmulatorConfig(keys=[KEY])) as base_url:
        yield pg_settings.model_copy(update={
            "endpoint_scoring_uri": f"{base_url}/score", "endpoint_key": SecretStr(KEY),
            "endpoint_max_attempts": 2, "endpoint_backoff_min_s": 0.01, "endpoint_backoff_max_s": 0.02,
            "volume_rows_per_request": 4, "webhook_allow_private_targets": True,
        })


@pytest.fixture
def ctx(settings: Settings) -> Iterator[WorkerContext]:
    context = ContextHolder(settings, make_celery(settings, sweeper=False)).get()
    yield context
    context.client.close()
    if context.client_3d is not None:
        context.client_3d.close()
    context.engine.dispose()


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(create_app(settings))) as client:
        yield client


@pytest.fixture
def key(settings: Settings) -> str:
    return new_tenant(settings)[1]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def submit(
    api: TestClient[Any, Any], key: str, image: bytes, prompts: str, options: dict[str, Any] | None = None,
    webhook_url: str | None = None,
) -> tuple[int, dict[str, Any]]:
    form = aiohttp.FormData()
    if webhook_url is not None:
        form.add_field("webhook_url", webhook_url)
    form.add_field("image", image, filename="upload.bin", content_type="application/octet-stream")
    form.add_field("prompts", prompts)
    if options is not None:
        form.add_field("options", json.dumps(options))
    resp = await api.post("/v1/jobs", data=form, headers=auth(key))
    return resp.status, await resp.json()


async def run(api: TestClient[Any, Any], key: str, ctx: WorkerContext, image: bytes, prompts: str,
              options: dict[str, Any] | None = None, webhook_url: str | None = None) -> dict[str, Any]:
    status, job = await submit(api, key, image, prompts, options, webhook_url)
    assert status == 202, job
    assert run_job(ctx, job["id"]) == "succeeded"
    resp = await api.get(f"/v1/jobs/{job['id']}", headers=auth(key))
    done = await resp.json()
    assert done["status"] == "succeeded", done
    return done  # type: ignore[no-any-return]


async def fetch(api: TestClient[Any, Any], key: str, url: str, status: int = 200) -> aiohttp.ClientResponse:
    resp = await api.get(url, headers=auth(key))
    assert resp.status == status, await resp.text()
    return resp


async def test_a_ct_dicom_job_is_windowed_and_every_2d_format_opens(
    api: TestClient[Any, Any], key: str, ctx: WorkerContext
) -> None:
    options = {"modality": "ct", "window": "abdomen"}
    job = await run(api, key, ctx, mf.dicom_file("CT_small.dcm"), "liver & tumor", options)
    assert job["input"]["format"] == "dicom" and job["input"]["modality"] == "CT" and job["input"]["kind"] == "image"
    result = job["result"]
    assert (result["width"], result["height"]) == (128, 128)
    provenance = result["provenance"]
    source = provenance["preprocessing"]["source"]
    assert source["normalization"]["preset"] == "abdomen"
    assert source["modality_lut"] == {"slope": 1.0, "intercept": -1024.0}
    assert provenance["model"] == "medimageparse" and provenance["endpoint_client_request_id"]
    assert provenance["preprocessing"]["pad"] and provenance["software_version"]
    assert set(result["formats"]) == {"png", "npz", "rle", "overlay", "dicom-seg"}

    png = await fetch(api, key, result["formats"]["png"] + "&mask=1")
    mask = cv2.imdecode(np.frombuffer(await png.read(), np.uint8), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (128, 128) and set(np.unique(mask)) <= {0, 255}
    assert json.loads(png.headers["Medparse-Provenance"])["model"] == "medimageparse"

    npz = np.load(io.BytesIO(await (await fetch(api, key, result["formats"]["npz"])).read()))
    assert npz["masks"].shape == (2, 128, 128)
    assert json.loads(str(npz["provenance"]))["endpoint_client_request_id"] == provenance["endpoint_client_request_id"]
    assert np.array_equal(npz["masks"][1] * 255, mask)
    # The old routes are unchanged for 2-D results, DICOM or not.
    old = np.load(io.BytesIO(await (await fetch(api, key, result["npz_url"])).read()))
    assert np.array_equal(old["masks"], npz["masks"])

    document = await (await fetch(api, key, result["formats"]["rle"])).json()
    assert [m["prompt"] for m in document["masks"]] == ["liver", "tumor"]
    for entry, expected in zip(document["masks"], npz["masks"], strict=True):
        assert np.array_equal(rle.decode(entry["segmentation"]), expected)
        assert entry["area"] == int(expected.sum())

    overlay_png = await (await fetch(api, key, result["formats"]["overlay"])).read()
    picture = cv2.imdecode(np.frombuffer(overlay_png, np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape[1] == 512 and picture.shape[0] > 512  # 4x enlarged, legend below

    seg_bytes = await (await fetch(api, key, result["formats"]["dicom-seg"])).read()
    seg = pydicom.dcmread(io.BytesIO(seg_bytes))
    source_ds = pydicom.dcmread(io.BytesIO(mf.dicom_file("CT_small.dcm")))
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == source_ds.StudyInstanceUID
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert referenced.ReferencedSOPInstanceUID == source_ds.SOPInstanceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "tumor"]
    again = await (await fetch(api, key, result["formats"]["dicom-seg"])).read()
    assert pydicom.dcmread(io.BytesIO(again)).SOPInstanceUID == seg.SOPInstanceUID  # stable UIDs

    nifti_answer = await (await fetch(api, key, f"{job['urls']['get']}/result?format=nifti", 409)).json()
    assert nifti_answer["code"] == "format_not_available"


async def test_a_nifti_volume_job_reports_progress_and_returns_the_input_geometry(
    api: TestClient[Any, Any], key: str, ctx: WorkerContext
) -> None:
    upload = mf.synthetic_ct_volume((48, 40, 6))
    job = await run(api, key, ctx, upload, "liver & kidney", {"window": {"center": 40, "width": 400}})
    assert job["input"]["kind"] == "volume" and job["input"]["shape"] == [48, 40, 6]
    assert job["progress"] == {"done": 6, "total": 6}
    result = job["result"]
    assert result["volume"] == {"shape": [48, 40, 6], "slice_axis": 2}
    provenance = result["provenance"]
    assert provenance["endpoint_calls"] == 2 and provenance["slices"] == {"axis": 2, "segmented": 6, "of": 6}
    assert provenance["preprocessing"]["source"]["normalization"]["center"] == 40
    liver = result["masks"][0]
    assert liver["area_px"] > 0 and len(liver["bbox"]) == 6

    npz = np.load(io.BytesIO(await (await fetch(api, key, result["npz_url"])).read()))
    assert npz["masks"].shape == (2, 48, 40, 6) and int(npz["masks"][0].sum()) == liver["area_px"]
    one = np.load(io.BytesIO(await (await fetch(api, key, liver["url"])).read()))
    assert np.array_equal(one["masks"][0], npz["masks"][0])

    labels_gz = await (await fetch(api, key, result["formats"]["nifti"])).read()
    labels = nib.Nifti1Image.from_bytes(gzip.decompress(labels_gz))
    source = nib.Nifti1Image.from_bytes(gzip.decompress(upload))
    assert labels.shape == source.shape and np.allclose(labels.affine, source.affine)
    volume = np.asarray(labels.dataobj)
    assert set(np.unique(volume)) <= {0, 1, 2} and np.count_nonzero(volume) > 0
    assert np.array_equal(volume == 2, npz["masks"][1].astype(bool))  # the later prompt wins overlaps

    document = await (await fetch(api, key, result["formats"]["rle"])).json()
    assert document["shape"] == [48, 40, 6] and document["slice_axis"] == 2
    first = document["masks"][0]["slices"][0]
    assert np.array_equal(rle.decode(first["segmentation"]), npz["masks"][0][:, :, first["slice"]])

    overlay = await fetch(api, key, result["formats"]["overlay"] + "&slice=3")
    assert overlay.headers["Medparse-Slice"] == "3"
    png = await fetch(api, key, result["formats"]["png"])
    assert int(png.headers["Medparse-Slice"]) in range(6)
    old_route = await (await fetch(api, key, f"{job['urls']['get']}/masks/0", 409)).json()
    assert old_route["code"] == "volume_result"


async def test_a_volume_jobs_webhook_payload_links_to_routes_that_serve_its_masks(
    api: TestClient[Any, Any], key: str, ctx: WorkerContext
) -> None:
    # The payload is built by the worker, the job JSON by the gateway: both must name the same routes.
    job = await run(api, key, ctx, mf.synthetic_ct_volume((32, 24, 4)), "liver & kidney",
                    webhook_url="http://127.0.0.1:9/hook")
    with ctx.engine.connect() as conn:  # the worker's engine: system scope, as the outbox writes
        payload = conn.execute(text(
            "SELECT payload FROM webhook_deliveries WHERE job_id = :id AND event_type = 'job.succeeded'"
        ), {"id": uuid.UUID(job["id"])}).scalar_one()
    data = payload["data"]
    assert data["urls"]["masks_npz"] == job["result"]["npz_url"]
    assert [m["url"] for m in data["masks"]] == [m["url"] for m in job["result"]["masks"]]
    for url in [data["urls"]["masks_npz"], *(m["url"] for m in data["masks"])]:
        npz = np.load(io.BytesIO(await (await fetch(api, key, url)).read()))
        assert npz["masks"].shape[-3:] == (32, 24, 4)


async def test_nifti_slices_axis_and_frame_options_pick_what_is_segmented(
    api: TestClient[Any, Any], key: str, ctx: WorkerContext
) -> None:
    job = await run(
        api, key, ctx, mf.nifti_file("example4d.nii.gz"), "brain",
        {"frame": 1, "slice_axis": 1, "slices": {"start": 40, "stop": 43}},
    )
    assert job["input"]["shape"] == [128, 96, 24] and job["input"]["frame"] == 1
    assert job["progress"] == {"done": 3, "total": 3}
    npz = np.load(io.BytesIO(await (await fetch(api, key, job["result"]["npz_url"])).read()))
    segmented = npz["masks"][0].any(axis=(0, 2))
    assert not segmented[:40].any() and not segmented[43:].any()


async def test_a_multi_frame_dicom_runs_every_frame_or_the_chosen_one(
    api: TestClient[Any, Any], key: str, ctx: WorkerContext
) -> None:
    upload = mf.multiframe_ct(3)
    volume_job = await run(api, key, ctx, upload, "liver", {"window": "abdomen"})
    assert volume_job["input"]["frames"] == 3 and volume_job["progress"] == {"done": 3, "total": 3}
    npz = np.load(io.BytesIO(await (await fetch(api, key, volume_job["result"]["npz_url"])).read()))
    assert npz["masks"].shape == (1, 3, 128, 128)
    # A legacy multi-frame has one position for all frames: the SEG's frames are placed along the normal.
    seg_answer = await fetch(api, key, volume_job["result"]["formats"]["dicom-seg"])
    seg = pydicom.dcmread(io.BytesIO(await seg_answer.read()))
    source = pydicom.dcmread(io.BytesIO(upload))
    by_z = {round(float(item.PlanePositionSequence[0].ImagePositionPatient[2]), 3): seg.pixel_array[i]
            for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence)}
    z0 = float(source.ImagePositionPatient[2])
    assert sorted(by_z) == [round(z0 + 5.0 * f, 3) for f in range(3)]  # SpacingBetweenSlices 5 along +z
    for f in range(3):
        assert np.array_equal(by_z[round(z0 + 5.0 * f, 3)], npz["masks"][0, f])

    # The NIfTI label map is laid out (columns, rows, frames) with an RAS affine from the DICOM geometry.
    assert "nifti" in volume_job["result"]["formats"]
    answer = await fetch(api, key, volume_job["result"]["formats"]["nifti"])
    assert answer.headers["Medparse-Geometry"] == "image-plane-module"
    labels = nib.Nifti1Image.from_bytes(gzip.decompress(await answer.read()))
    assert labels.shape == (source.Columns, source.Rows, 3)
    spacing = [float(v) for v in source.PixelSpacing]
    assert np.allclose(np.linalg.norm(labels.affine[:3, :3], axis=0), [spacing[1], spacing[0], 5.0], atol=1e-5)
    lps = [float(v) for v in source.ImagePositionPatient]
    assert np.allclose(labels.affine[:3, 3], [-lps[0], -lps[1], lps[2]], atol=1e-4)  # LPS -> RAS
    assert int(labels.header["sform_code"]) == 1 and "geometry=image-plane-module" in str(labels.header["descrip"])
    volume = np.asarray(labels.dataobj)
    assert np.array_equal(volume == 1, np.transpose(npz["masks"][0], (2, 1, 0)).astype(bool))
    assert int(np.count_nonzero(volume == 1)) == volume_job["result"]["masks"][0]["area_px"]
    comment = json.loads(labels.header.extensions[0].get_content())
    assert comment["provenance"]["geometry"] == "image-plane-module"

    frame_job = await run(api, key, ctx, upload, "liver", {"frame": 2, "window": "abdomen"})
    assert frame_job["input"]["kind"] == "image" and frame_job["progress"] is None
    assert frame_job["result"]["provenance"]["preprocessing"]["source"]["frame"] == 2


async def test_dicom_volume_geometry_from_functional_groups_or_none_at_all(
    api: TestClient[Any, Any], key: str, ctx: WorkerContext
) -> None:
    shared = await run(api, key, ctx, mf.multiframe_ct_geometry(3, geometry="shared"), "liver & kidney")
    labels = nib.Nifti1Image.from_bytes(gzip.decompress(
        await (await fetch(api, key, shared["result"]["formats"]["nifti"])).read()))
    assert labels.shape == (128, 128, 3)
    assert np.allclose(np.linalg.norm(labels.affine[:3, :3], axis=0), [0.661468, 0.661468, 2.5], atol=1e-5)
    volume = np.asarray(labels.dataobj)
    for index, mask in enumerate(shared["result"]["masks"]):
        assert int(np.count_nonzero(volume == index + 1)) <= mask["area_px"]  # a later prompt wins overlaps
    one = nib.Nifti1Image.from_bytes(gzip.decompress(
        await (await fetch(api, key, shared["result"]["formats"]["nifti"] + "&mask=0")).read()))
    assert int(np.count_nonzero(np.asarray(one.dataobj))) == shared["result"]["masks"][0]["area_px"]
    seg = pydicom.dcmread(io.BytesIO(await (await fetch(api, key, shared["result"]["formats"]["dicom-seg"])).read()))
    assert seg.NumberOfFrames == 3 * 2  # frames x segments
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "kidney"]

    per_frame = await run(api, key, ctx, mf.multiframe_ct_geometry(3, geometry="per-frame"), "liver")
    answer = await fetch(api, key, per_frame["result"]["formats"]["nifti"])
    assert answer.headers["Medparse-Geometry"] == "per-frame-functional-groups"
    labels = nib.Nifti1Image.from_bytes(gzip.decompress(await answer.read()))
    assert np.allclose(labels.affine[:3, 2], [0.0, 0.0, 3.0], atol=1e-5)  # per-frame positions 3 mm apart

    bare = await run(api, key, ctx, mf.multiframe_ct_geometry(3, geometry="none"), "liver")
    answer = await fetch(api, key, bare["result"]["formats"]["nifti"])
    assert answer.headers["Medparse-Geometry"] == "unknown"
    labels = nib.Nifti1Image.from_bytes(gzip.decompress(await answer.read()))
    assert labels.shape == (128, 128, 3) and np.allclose(labels.affine, np.eye(4))
    comment = json.loads(labels.header.extensions[0].get_content())
    assert comment["provenance"]["geometry"] == "unknown"
    assert "ImagePositionPatient" in comment["provenance"]["geometry_detail"]["missing"]
    assert int(np.count_nonzero(np.asarray(labels.dataobj))) == bare["result"]["masks"][0]["area_px"]
    refused = await (await fetch(api, key, bare["result"]["formats"]["dicom-seg"], 409)).json()
    assert refused["code"] == "format_not_available" and "ImagePositionPatient" in refused["detail"]
    no_spacing = await run(api, key, ctx, mf.multiframe_ct_geometry(3, geometry="no-spacing"), "liver")
    refused = await (await fetch(api, key, no_spacing["result"]["formats"]["dicom-seg"], 409)).json()
    assert "SpacingBetweenSlices or SliceThickness" in refused["detail"]


async def test_the_3d_model_gets_the_volume_and_returns_a_label_volume(
    api: TestClient[Any, Any], key: str, ctx: WorkerContext
) -> None:
    upload = mf.nifti_file("anatomical.nii")
    job = await run(api, key, ctx, upload, "brain & ventricle", {"model": "medimageparse-3d"})
    provenance = job["result"]["provenance"]
    assert provenance["model"] == "medimageparse-3d" and provenance["deployment"] == "medimageparse-3d"
    labels_gz = await (await fetch(api, key, job["result"]["formats"]["nifti"])).read()
    labels = nib.Nifti1Image.from_bytes(gzip.decompress(labels_gz))
    source = nib.Nifti1Image.from_bytes(upload)
    assert labels.shape == source.shape == (33, 41, 25) and np.allclose(labels.affine, source.affine)
    assert job["progress"] == {"done": 1, "total": 1}


def png16_ct() -> bytes:
    """CT_small's HU + 1024 as a 16-bit grayscale PNG (what a DICOM export tool might write)."""
    hu = pydicom.dcmread(io.BytesIO(mf.dicom_file("CT_small.dcm"))).pixel_array.astype(np.int32) - 1024
    ok, png = cv2.imencode(".png", np.clip(hu + 1024, 0, 65535).astype(np.uint16))
    assert ok
    return png.tobytes()


def float_tiff() -> bytes:
    from PIL import Image

    values = np.linspace(-3.5, 7.25, 96 * 80, dtype=np.float32).reshape(80, 96)
    buffer = io.BytesIO()
    Image.fromarray(values, mode="F").save(buffer, format="TIFF")
    return buffer.getvalue()


#: (upload, options, expected input details): every sample kind the wheels ship, through the whole pipeline
SAMPLES: list[tuple[str, Any, dict[str, Any] | None]] = [
    ("MR_small_bigendian.dcm", lambda: mf.dicom_file("MR_small_bigendian.dcm"), None),
    ("MR_small_RLE.dcm", lambda: mf.dicom_file("MR_small_RLE.dcm"), None),
    ("MR_small_jp2klossless.dcm", lambda: mf.dicom_file("MR_small_jp2klossless.dcm"), None),
    ("MR_small_jpeg_ls_lossless.dcm", lambda: mf.dicom_file("MR_small_jpeg_ls_lossless.dcm"), None),
    ("JPEG2000.dcm (NM)", lambda: mf.dicom_file("JPEG2000.dcm"), None),
    ("SC_rgb_jpeg.dcm", lambda: mf.dicom_file("SC_rgb_jpeg.dcm"), None),
    ("SC_ybr_full_422_uncompressed.dcm", lambda: mf.dicom_file("SC_ybr_full_422_uncompressed.dcm"), None),
    ("examples_palette.dcm", lambda: mf.dicom_file("examples_palette.dcm"), None),
    ("SC_rgb_rle_16bit.dcm", lambda: mf.dicom_file("SC_rgb_rle_16bit.dcm"), None),
    ("MONOCHROME1", mf.monochrome1, None),
    ("CT re-encoded JPEG 2000", lambda: mf.reencoded_ct("jpeg2000"), {"window": "abdomen", "modality": "ct"}),
    ("CT re-encoded RLE", lambda: mf.reencoded_ct("rle"), {"window": {"center": 40, "width": 400}}),
    ("examples_ybr_color.dcm (30 frames)", lambda: mf.dicom_file("examples_ybr_color.dcm"), {"slices": [0, 29]}),
    ("rtdose.dcm (15 frames, 32 bit)", lambda: mf.dicom_file("rtdose.dcm"), None),
    ("example_nifti2.nii.gz (NIfTI-2, 4-D)", lambda: mf.nifti_file("example_nifti2.nii.gz"), {"frame": 1}),
    ("functional.nii (4-D float)", lambda: mf.nifti_file("functional.nii"), None),
    ("ihc.png (pathology)", lambda: mf.skimage_file("ihc.png"), {"modality": "pathology"}),
    ("retina.jpg (fundus)", lambda: mf.skimage_file("retina.jpg"), {"modality": "fundus"}),
    ("16-bit PNG", png16_ct, {"window": {"center": 1064, "width": 400}}),
    ("float TIFF", float_tiff, None),
]


async def test_every_sample_kind_runs_through_the_whole_pipeline(
    api: TestClient[Any, Any], key: str, ctx: WorkerContext
) -> None:
    for name, make, options in SAMPLES:
        job = await run(api, key, ctx, make(), "tumor & organ", options)
        result = job["result"]
        npz = np.load(io.BytesIO(await (await fetch(api, key, result["formats"]["npz"])).read()))
        volume = job["input"].get("kind") == "volume"
        expected = (2, *job["input"]["shape"]) if volume else (2, job["input"]["height"], job["input"]["width"])
        assert npz["masks"].shape == expected, name
        assert result["provenance"]["preprocessing"]["source"]["normalization"]["method"], name


#: (upload, options, status, code, field): every one must get its 4xx at submit time
REJECTED = [
    ("truncated_dicom", None, 422, "corrupt_image", "image"),
    ("damaged_rle", None, 422, "corrupt_image", "image"),
    ("damaged_jpeg", None, 422, "corrupt_image", "image"),
    ("undecodable_jpeg", None, 422, "corrupt_image", "image"),
    ("no_preamble", None, 415, "unsupported_format", "image"),
    ("rtstruct", None, 415, "unsupported_format", "image"),
    ("dicom_declaring_huge", None, 413, "image_too_large", "image"),
    ("ct", {"frame": 1}, 422, "invalid_option", "options.frame"),
    ("ct", {"model": "medimageparse-3d"}, 422, "invalid_option", "options.model"),
    ("truncated_nifti", None, 422, "corrupt_image", "image"),
    ("nifti_absurd_dims", None, 413, "image_too_large", "image"),
    ("nifti_negative_dims", None, 422, "empty_image", "image"),
    ("nifti_complex", None, 415, "unsupported_format", "image"),
    ("nifti_header_only", None, 415, "unsupported_format", "image"),
    ("nifti", {"slices": [99]}, 422, "invalid_option", "options.slices"),
    ("nifti", {"frame": 1}, 422, "invalid_option", "options.frame"),
    ("png", {"slice_axis": 0}, 422, "invalid_option", "options.slice_axis"),
]


async def test_hostile_and_unsupported_medical_uploads_get_a_clean_4xx(api: TestClient[Any, Any], key: str) -> None:
    uploads = {
        "truncated_dicom": lambda: mf.dicom_file("MR_truncated.dcm"),
        "damaged_rle": lambda: mf.damaged_pixels("MR_small_RLE.dcm"),
        "damaged_jpeg": lambda: mf.damaged_pixels("SC_rgb_jpeg.dcm"),
        "undecodable_jpeg": lambda: mf.dicom_file("JPEG-lossy.dcm"),
        "no_preamble": lambda: mf.without_preamble(mf.dicom_file("CT_small.dcm")),
        "rtstruct": lambda: mf.dicom_file("rtstruct.dcm"),
        "dicom_declaring_huge": lambda: mf.dicom_declaring(60000, 60000, 100),
        "ct": lambda: mf.dicom_file("CT_small.dcm"),
        "truncated_nifti": lambda: mf.truncated(mf.nifti_file("example4d.nii.gz")),
        "nifti_absurd_dims": lambda: mf.nifti_with(mf.nifti_file("anatomical.nii"), dims=(30000, 30000, 30000)),
        "nifti_negative_dims": lambda: mf.nifti_with(mf.nifti_file("anatomical.nii"), dims=(33, -41, 25)),
        "nifti_complex": lambda: mf.nifti_with(mf.nifti_file("anatomical.nii"), datatype=32),
        "nifti_header_only": lambda: mf.nifti_with(mf.nifti_file("anatomical.nii"), magic=b"ni1\0"),
        "nifti": lambda: mf.nifti_file("anatomical.nii"),
        "png": lambda: mf.skimage_file("camera.png"),
    }
    for name, options, status, code, field in REJECTED:
        got, body = await submit(api, key, uploads[name](), "liver", options)
        assert (got, body.get("code")) == (status, code), (name, body)
        assert body["fields"][0]["field"] == field, (name, body)


async def test_another_tenants_result_is_404_and_unknown_formats_are_400(
    api: TestClient[Any, Any], key: str, ctx: WorkerContext, settings: Settings
) -> None:
    job = await run(api, key, ctx, mf.dicom_file("MR_small.dcm"), "brain")
    _, other = new_tenant(settings)
    resp = await api.get(job["result"]["formats"]["dicom-seg"], headers=auth(other))
    assert resp.status == 404
    resp = await api.get(f"{job['urls']['get']}/result?format=jpeg", headers=auth(key))
    assert resp.status == 400 and (await resp.json())["fields"][0]["field"] == "format"
    resp = await api.get(f"/v1/jobs/{uuid.uuid4()}/result?format=png", headers=auth(key))
    assert resp.status == 404
    resp = await api.get(f"{job['urls']['get']}/result?format=png&mask=5", headers=auth(key))
    assert resp.status == 404 and (await resp.json())["code"] == "mask_not_found"
    with ctx.engine.begin() as conn:  # job_medical is under the same row-level security as job_masks
        flags = conn.execute(text(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = 'job_medical'"
        )).one()
        policy = conn.execute(text(
            "SELECT qual FROM pg_policies WHERE tablename = 'job_medical' AND policyname = 'tenant_isolation'"
        )).scalar_one()
    assert tuple(flags) == (True, True) and "jobs" in policy
