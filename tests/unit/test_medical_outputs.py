"""Output formats (RLE, overlay, NIfTI labels, DICOM SEG, NPZ) and the compact volume mask store."""

from __future__ import annotations

import gzip
import io
import json

import cv2
import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from medparse import masks
from medparse.medical import dicom, geometry, nifti, volumes
from medparse.outputs import archive, overlay, rle
from medparse.outputs.dicom_seg import dicom_seg_bytes
from tests.support import medical_files as mf


def blob_mask(height: int = 1024, width: int = 1024, blobs: int = 1) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    for i in range(blobs):
        cv2.ellipse(mask, (300 + 200 * i, 400), (90, 60), 15 * i, 0, 360, 1, -1)
    return mask


def test_rle_round_trips_and_matches_pycocotools_area_and_bbox() -> None:
    for mask in (blob_mask(), blob_mask(blobs=3), np.zeros((7, 5), np.uint8), np.ones((1, 9), np.uint8)):
        encoded = rle.encode(mask)
        assert np.array_equal(rle.decode(encoded), mask)
        assert isinstance(encoded["counts"], str)
    x, y, w, h = rle.coco_bbox(rle.encode(blob_mask()))
    ys, xs = np.nonzero(blob_mask())
    assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_stored_mask_sizes_for_typical_and_worst_case_masks() -> None:
    """The figures quoted in docs/medical-formats.md (bytes per stored mask)."""
    rng = np.random.default_rng(0)
    organ = len(masks.encode_mask(blob_mask()))
    noise = len(masks.encode_mask(rng.integers(0, 2, (1024, 1024), dtype=np.uint8)))
    assert organ < 2_500 and noise <= 1024 * 1024 // 8 + 64  # packbits + zlib: worst case = packbits + framing
    coco_organ = len(rle.encode(blob_mask())["counts"])
    assert coco_organ < organ  # RLE is smaller on smooth blobs (the reason to offer it) ...
    assert len(rle.encode(rng.integers(0, 2, (1024, 1024), dtype=np.uint8))["counts"]) > noise  # ... not on noise
    # A volume: 64 slices of 512x512, an organ in the middle third; per prompt, all slices.
    volume = np.zeros((1, 64, 512, 512), np.uint8)
    volume[0, 20:44] = blob_mask(512, 512)
    stored = len(volumes.encode(volume))
    assert stored < 64 * 512 * 512 / 8 / 50  # far below even raw packbits
    worst = len(volumes.encode(rng.integers(0, 2, (1, 16, 256, 256), dtype=np.uint8)))
    assert worst <= 16 * 256 * 256 // 8 + 64


def test_volume_masks_round_trip_in_input_order_with_3d_bboxes() -> None:
    rng = np.random.default_rng(2)
    masks4 = (rng.random((2, 5, 7, 13)) > 0.8).astype(np.uint8)  # (N, S, H, W), W not a multiple of 8
    decoded = volumes.decode(volumes.encode(masks4), 2, 5, 7, 13, slice_axis=1)
    assert np.array_equal(decoded.masks, masks4)
    assert decoded.shape == (7, 5, 13)
    assert np.array_equal(decoded.in_input_order(1), np.moveaxis(masks4[1], 0, 1))
    one = np.zeros((4, 6, 8), np.uint8)
    one[1:3, 2:5, 3:4] = 1  # slice-major (S, H, W) with slice axis 2 -> input (H, W, S)
    area, bbox = volumes.summary(one, slice_axis=2)
    assert area == 6 and bbox == [2, 3, 1, 5, 4, 3]
    labels = volumes.VolumeMasks(np.stack([one, one]), 2).label_volume()
    assert labels.shape == (6, 8, 4) and set(np.unique(labels)) == {0, 2}
    with pytest.raises(ValueError):
        volumes.decode(volumes.encode(masks4), 2, 5, 8, 13, slice_axis=1)


def test_overlay_draws_each_mask_in_its_colour_with_a_legend_and_provenance() -> None:
    pixels = np.full((64, 80), 100, np.uint8)
    both = np.zeros((2, 64, 80), np.uint8)
    both[0, 10:30, 10:30] = 1
    both[1, 40:60, 50:70] = 1
    body = overlay.overlay_png(pixels, both, [("liver", "liver"), ("tumor", "tumor")], {"Medparse-Provenance": "{}"})
    image = Image.open(io.BytesIO(body))
    assert image.mode == "RGB" and image.width == 80 * 7 and image.height > 64 * 7  # 7x to reach 512, legend below
    assert "Medparse-Provenance" in image.text
    rgb = np.asarray(image)
    inside_first, inside_second, outside = rgb[20 * 7, 20 * 7], rgb[50 * 7, 60 * 7], rgb[5, 5]
    assert tuple(outside) == (100, 100, 100)
    assert inside_first[0] > inside_first[2] and inside_second[1] > inside_second[0]  # red-ish, green-ish


def test_the_nifti_label_map_keeps_the_input_header_and_affine() -> None:
    data = mf.nifti_file("anatomical.nii")
    source = nib.Nifti1Image.from_bytes(data)
    labels = np.zeros(source.shape, np.uint8)
    labels[5:9, 5:9, 3] = 2
    out = nib.Nifti1Image.from_bytes(gzip.decompress(nifti.label_volume_bytes(
        labels, nifti.header_blob(source), nifti.affine_of(source), description="medparse test",
        comment=json.dumps({"provenance": {"model": "medimageparse"}}).encode(),
    )))
    assert out.shape == source.shape and np.allclose(out.affine, source.affine)
    assert np.array_equal(np.asarray(out.dataobj), labels) and out.get_data_dtype() == np.uint8
    assert out.header["intent_code"] == 1002 and b"medparse" in out.header["descrip"].tobytes()
    assert json.loads(out.header.extensions[0].get_content())["provenance"]["model"] == "medimageparse"


def test_dicom_seg_references_the_source_instance_from_the_stored_header_alone() -> None:
    data = mf.dicom_file("MR_small_jp2klossless.dcm")
    header = dicom.header_bytes(dicom.open_dicom(data, max_pixels=10**8))
    assert len(header) < len(data)  # no pixel data kept
    mask = np.zeros((2, 64, 64), np.uint8)
    mask[0, 10:30, 20:40] = 1
    seg = pydicom.dcmread(io.BytesIO(dicom_seg_bytes(
        header, mask, ["tumor", "brain"], job_id="00000000-0000-0000-0000-000000000001", model="medimageparse",
        provenance={"endpoint_client_request_id": "abc"},
    )))
    source = pydicom.dcmread(io.BytesIO(data))
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentationType == "BINARY"
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    assert referenced.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    frames = seg.pixel_array.reshape(-1, 64, 64)
    assert frames.shape[0] == 2 and np.array_equal(frames[0], mask[0]) and not frames[1].any()


def test_dicom_geometry_gives_a_ras_affine_over_columns_rows_frames() -> None:
    ds = pydicom.Dataset()
    ds.NumberOfFrames = 4
    ds.ImagePositionPatient = [10.0, -20.0, 30.0]
    ds.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]  # sagittal: columns along +y (A->P), rows along -z
    ds.PixelSpacing = [0.5, 0.8]  # between rows, between columns
    ds.SliceThickness = 2.0
    found = geometry.frame_geometry(ds)
    assert found.source == "image-plane-module" and found.details["slice_spacing"] == "SliceThickness (top level)"
    affine = found.nifti_affine()
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    assert np.allclose(affine[:3, 0], lps_to_ras * [0.0, 0.8, 0.0])  # i = column: row direction x PixelSpacing[1]
    assert np.allclose(affine[:3, 1], lps_to_ras * [0.0, 0.0, -0.5])  # j = row: column direction x PixelSpacing[0]
    assert np.allclose(affine[:3, 2], lps_to_ras * [-2.0, 0.0, 0.0])  # k = frame: along the normal, row x column = -x
    assert np.allclose(affine[:3, 3], [-10.0, 20.0, 30.0])
    assert found.positions is not None and np.allclose(found.positions[3], [4.0, -20.0, 30.0])

    ds.SpacingBetweenSlices = 3.0  # preferred over SliceThickness
    assert np.allclose(geometry.frame_geometry(ds).nifti_affine()[:3, 2], [3.0, 0.0, 0.0])
    del ds.ImageOrientationPatient
    bare = geometry.frame_geometry(ds)
    assert bare.source == "unknown" and bare.details["missing"] == ["ImageOrientationPatient"]
    assert np.allclose(bare.nifti_affine(), np.diag([0.8, 0.5, 3.0, 1.0]))  # spacing only


def test_npz_archives_carry_provenance_without_pickles() -> None:
    body = archive.npz_bytes({"masks": np.ones((1, 2, 3), np.uint8)}, {"model": "medimageparse", "n": 1})
    loaded = np.load(io.BytesIO(body), allow_pickle=False)
    assert loaded["masks"].shape == (1, 2, 3) and json.loads(str(loaded["provenance"]))["model"] == "medimageparse"
