"""DICOM/NIfTI readers, windowing and the 3-D answer parser, on the sample files the wheels ship."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pybase64
import pydicom
import pytest

from medparse import imaging
from medparse.endpoint.errors import EndpointBadResponse
from medparse.endpoint.protocol import ScoreRow
from medparse.endpoint.protocol3d import parse_3d_response
from medparse.medical import dicom, inputs, nifti, windowing
from medparse.medical.errors import OptionRejected
from medparse.medical.formats import sniff_medical
from medparse.settings import Settings
from tests.support import medical_files as mf

LIMITS = inputs.Limits.from_settings(Settings())


def test_formats_are_sniffed_from_the_content_never_the_name() -> None:
    assert sniff_medical(mf.dicom_file("CT_small.dcm")) == "dicom"
    assert sniff_medical(mf.nifti_file("anatomical.nii")) == "nifti"
    assert sniff_medical(mf.nifti_file("example4d.nii.gz")) == "nifti"
    assert sniff_medical(mf.nifti_file("example_nifti2.nii.gz")) == "nifti"
    assert sniff_medical(mf.without_preamble(mf.dicom_file("CT_small.dcm"))) is None  # force=False: no DICM, no DICOM
    assert sniff_medical(gzip.compress(b"not a volume" * 100)) is None
    assert sniff_medical(mf.skimage_file("camera.png")) is None


def test_ct_values_are_hounsfield_units_and_presets_match_the_samples() -> None:
    header = dicom.open_dicom(mf.dicom_file("CT_small.dcm"), max_pixels=10**8)
    hu = dicom.decode(header, [0])
    raw = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm")).pixel_array
    assert np.array_equal(hu, raw * 1.0 - 1024)
    pixels, params = windowing.to_uint8(hu, "abdomen")
    lo, hi = -150.0, 250.0
    expected = ((np.clip(hu, lo, hi) - lo) / (hi - lo) * 255).astype(np.uint8)
    assert np.array_equal(pixels, expected) and params["preset"] == "abdomen"
    custom, params = windowing.to_uint8(hu, {"center": 50, "width": 400})
    assert np.array_equal(custom, expected) and (params["low"], params["high"]) == (-150, 250)


def test_percentile_normalisation_is_numpy_percentile_for_signed_and_float_values() -> None:
    rng = np.random.default_rng(1)
    signed = rng.integers(-1024, 3000, (50, 60)).astype(np.int16)
    floats = rng.normal(0, 10, (40, 30)).astype(np.float32)
    for values in (signed, floats):
        lo, hi = windowing.percentile_bounds(values)
        assert np.allclose([lo, hi], np.percentile(values.astype(np.float64), (0.5, 99.5)))
    eight_bit = rng.integers(0, 256, (8, 8)).astype(np.uint8)
    same, params = windowing.to_uint8(eight_bit, "lung")
    assert same is eight_bit and "window_not_applied" in params  # the toolkit leaves 8-bit input alone


def test_monochrome1_is_inverted_after_windowing() -> None:
    plain, _ = inputs.load_2d(mf.dicom_file("MR_small.dcm"), None, 10**8)
    inverted, source = inputs.load_2d(mf.monochrome1(), None, 10**8)
    assert source["inverted"] is True
    assert np.array_equal(inverted, 255 - plain)


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "SC_ybr_full_422_uncompressed.dcm", "examples_palette.dcm"])
def test_colour_dicom_becomes_rgb(name: str) -> None:
    pixels, _ = inputs.load_2d(mf.dicom_file(name), None, 10**8)
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    assert pixels.std() > 20  # real content, not a failed conversion
    if name.startswith("SC_"):  # the same test pattern as the lossless RGB reference
        reference, _ = inputs.load_2d(mf.dicom_file("SC_rgb_rle.dcm"), None, 10**8)
        assert np.abs(pixels.astype(int) - reference).mean() < 4


def test_compressed_and_big_endian_variants_decode_to_the_same_pixels() -> None:
    reference = dicom.decode(dicom.open_dicom(mf.dicom_file("MR_small.dcm"), max_pixels=10**8), [0])
    for name in ("MR_small_bigendian.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                 "MR_small_jpeg_ls_lossless.dcm"):
        pixels = dicom.decode(dicom.open_dicom(mf.dicom_file(name), max_pixels=10**8), [0])
        assert np.array_equal(pixels, reference), name
    ct = dicom.decode(dicom.open_dicom(mf.dicom_file("CT_small.dcm"), max_pixels=10**8), [0])
    for syntax in ("jpeg2000", "rle"):
        assert np.array_equal(dicom.decode(dicom.open_dicom(mf.reencoded_ct(syntax), max_pixels=10**8), [0]), ct)


def test_the_pixel_limit_is_checked_from_the_header_before_decoding() -> None:
    with pytest.raises(imaging.ImageRejected) as caught:
        dicom.open_dicom(mf.dicom_declaring(60000, 60000, 100), max_pixels=40_000_000)
    assert caught.value.code == "image_too_large"
    frames = mf.multiframe_ct(3)
    with pytest.raises(imaging.ImageRejected):
        dicom.open_dicom(frames, max_pixels=128 * 128 * 3 - 1)  # frames count too


def test_a_multi_frame_dicom_is_a_volume_unless_a_frame_is_chosen() -> None:
    frames = mf.multiframe_ct(3)
    assert inputs.DicomUpload.open(frames, {}, max_pixels=10**8).is_volume
    assert not inputs.DicomUpload.open(frames, {"frame": 1}, max_pixels=10**8).is_volume
    stack = inputs.open_volume(frames, {"slices": [0, 2]}, LIMITS)
    assert stack.shape == (3, 128, 128) and stack.indices == [0, 2]
    one, _ = inputs.load_2d(frames, {"frame": 2}, 10**8)
    assert np.array_equal(stack.slice_uint8(2), one)  # a volume and a frame job see the same frame
    with pytest.raises(OptionRejected):
        inputs.probe(frames, {"frame": 3}, LIMITS)


def test_nifti_slices_are_taken_as_the_samples_do_without_reorientation() -> None:
    data = mf.nifti_file("anatomical.nii")
    volume = np.asarray(nib.Nifti1Image.from_bytes(data).dataobj)
    for axis in (0, 1, 2):
        stack = inputs.open_volume(data, {"slice_axis": axis}, LIMITS)
        assert stack.shape == volume.shape
        assert np.array_equal(stack.values[3], np.take(volume, 3, axis=axis))


def test_a_4d_nifti_frame_is_one_volume_and_its_geometry_is_kept() -> None:
    data = mf.nifti_file("example4d.nii.gz")
    image = nib.load(mf.NIBABEL_DATA + "/example4d.nii.gz")
    stack = inputs.open_volume(data, {"frame": 1}, LIMITS)
    assert stack.shape == (128, 96, 24)
    assert np.array_equal(stack.values[5], np.asarray(image.dataobj[:, :, 5, 1]))
    assert np.allclose(stack.record.affine, image.affine)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (lambda: mf.nifti_with(mf.nifti_file("anatomical.nii"), dims=(30000, 30000, 30000)), "image_too_large"),
        (lambda: mf.nifti_with(mf.nifti_file("anatomical.nii"), dims=(33, 0, 25)), "empty_image"),
        (lambda: mf.nifti_with(mf.nifti_file("anatomical.nii"), vox_offset=1e12), "corrupt_image"),
        (lambda: mf.nifti_with(mf.nifti_file("anatomical.nii"), datatype=128), "unsupported_format"),
        (lambda: mf.truncated(mf.nifti_file("anatomical.nii")), "corrupt_image"),
        (lambda: mf.truncated(mf.nifti_file("example4d.nii.gz"), 0.3), "corrupt_image"),
    ],
)
def test_absurd_nifti_headers_are_refused_before_allocating(data: object, code: str) -> None:
    with pytest.raises(imaging.ImageRejected) as caught:
        inputs.probe(data(), {}, LIMITS)  # type: ignore[operator]
    assert caught.value.code == code


def test_a_gzip_is_never_inflated_beyond_the_declared_size() -> None:
    bomb = mf.gzip_bomb_nifti()  # declares 64 voxels, carries 64 MiB of zeros
    header = nifti.parse_header(bomb, max_voxels=100, max_bytes=10_000)
    assert len(nifti.inflate(bomb, header)) == header.file_bytes < 1000


def test_16_bit_png_and_windowing_through_prepare_image() -> None:
    import cv2

    values = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 15)
    ok, png = cv2.imencode(".png", values)
    assert ok
    default = imaging.prepare_image(png.tobytes(), max_pixels=10**7)
    assert default.params["source"]["normalization"]["method"] == "percentile"
    windowed = imaging.prepare_image(png.tobytes(), max_pixels=10**7, options={"window": {"center": 100, "width": 200}})
    assert windowed.params["source"]["normalization"]["method"] == "window"
    assert windowed.png != default.png


def _nifti_answer(labels: np.ndarray) -> bytes:
    blob = gzip.compress(nib.Nifti1Image(labels, np.eye(4)).to_bytes())
    return json.dumps([{"nifti_file": json.dumps({"data": pybase64.b64encode_as_string(blob)})}]).encode()


def test_the_3d_answer_is_parsed_in_both_documented_shapes() -> None:
    rows = [ScoreRow(b"nii", ["liver", "kidney"])]
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[1:3, 1:3, 2] = 2
    (row,) = parse_3d_response(_nifti_answer(labels), rows, max_voxels=1000)
    assert np.array_equal(row.masks, labels)
    stack = np.zeros((2, 4, 5, 6), np.uint8)
    features = {"data": pybase64.b64encode_as_string(stack.tobytes()), "shape": [2, 4, 5, 6], "dtype": "uint8"}
    body = json.dumps([{"image_features": json.dumps(features), "text_features": ["liver", "kidney"]}]).encode()
    (row,) = parse_3d_response(body, rows, max_voxels=1000)
    assert row.masks.shape == (2, 4, 5, 6) and row.labels == ["liver", "kidney"]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'[{"nifti_file": "{\\"data\\": \\"!!!\\"}"}]',
        b'[{"other": 1}]',
        _nifti_answer(np.full((2, 2, 2), 7, np.uint8)),  # label 7 for 2 prompts
        _nifti_answer(np.zeros((2000, 2, 2), np.uint8)),  # above the voxel bound
    ],
)
def test_a_bad_3d_answer_is_an_endpoint_bad_response(body: bytes) -> None:
    with pytest.raises(EndpointBadResponse):
        parse_3d_response(body, [ScoreRow(b"nii", ["liver", "kidney"])], max_voxels=1000)
