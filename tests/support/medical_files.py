"""Real medical sample files, from the wheels installed here, and variants built from them.

pydicom >= 3 keeps only part of its test data in the wheel (the rest is a separate download that
cannot be fetched here); ``pydicom.data.get_testdata_file`` finds these offline:
CT (CT_small), MR (MR_small), big-endian (MR_small_bigendian), RLE (MR_small_RLE), JPEG 2000
(MR_small_jp2klossless, JPEG2000), JPEG-LS (MR_small_jpeg_ls_lossless), JPEG baseline RGB
(SC_rgb_jpeg), YBR_FULL_422 multi-frame ultrasound (examples_ybr_color, 30 frames), RGB RLE
2-frame (SC_rgb_rle_2frame), PALETTE COLOR (examples_palette), 16-bit RGB (SC_rgb_rle_16bit),
truncated (MR_truncated), undecodable JPEG (JPEG-lossy), no image (rtstruct).
Not in any installable wheel, so built here with pydicom: MONOCHROME1 (from MR_small), a
multi-frame CT (frames of CT_small), JPEG 2000 / RLE re-encodings of CT_small with the installed
encoders, and the hostile variants. nibabel's wheel ships 3-D (anatomical.nii, big-endian int16)
and 4-D (example4d.nii.gz, functional.nii) NIfTI; scikit-image's ships the pathology (ihc.png)
and retina (retina.jpg) photographs.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import warnings

import nibabel as nib
import numpy as np
import pydicom
import skimage.data
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, RLELossless

NIBABEL_DATA = os.path.join(os.path.dirname(nib.__file__), "tests", "data")
SKIMAGE_DATA = os.path.dirname(skimage.data.__file__)


def dicom_file(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None, f"{name} is not in the installed pydicom wheel"
    with open(path, "rb") as handle:
        return handle.read()


def nifti_file(name: str) -> bytes:
    with open(os.path.join(NIBABEL_DATA, name), "rb") as handle:
        return handle.read()


def skimage_file(name: str) -> bytes:
    with open(os.path.join(SKIMAGE_DATA, name), "rb") as handle:
        return handle.read()


def _dataset(name: str) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(dicom_file(name)))


def _write(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def monochrome1() -> bytes:
    """MR_small declared MONOCHROME1: the reader must invert it."""
    ds = _dataset("MR_small.dcm")
    ds.PhotometricInterpretation = "MONOCHROME1"
    return _write(ds)


def multiframe_ct(frames: int = 3) -> bytes:
    """CT_small's pixels as a multi-frame image (each frame a shifted copy), uncompressed."""
    ds = _dataset("CT_small.dcm")
    pixels = ds.pixel_array
    stack = np.stack([np.roll(pixels, 4 * i, axis=1) for i in range(frames)])
    ds.NumberOfFrames = frames
    ds.PixelData = stack.astype(pixels.dtype).tobytes()
    return _write(ds)


def multiframe_ct_geometry(frames: int = 3, *, geometry: str) -> bytes:
    """``multiframe_ct`` with its geometry moved or removed (``ImagePositionPatient`` [-158.1, -179.0, -75.7],
    axial orientation, ``PixelSpacing`` 0.661468, slices 5 mm apart in the legacy original).

    ``shared``: only ``SharedFunctionalGroupsSequence`` (one plane position, orientation, pixel measures
    with ``SpacingBetweenSlices`` 2.5), no top-level geometry. ``per-frame``: per-frame plane positions
    3 mm apart along +z plus shared orientation/measures. ``no-spacing``: legacy position and orientation
    but no ``SpacingBetweenSlices``/``SliceThickness``. ``none``: no position, orientation or spacing at all.
    """
    ds = pydicom.dcmread(io.BytesIO(multiframe_ct(frames)))
    position, orientation = list(ds.ImagePositionPatient), list(ds.ImageOrientationPatient)
    spacing = list(ds.PixelSpacing)
    drop = {"shared": ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SpacingBetweenSlices",
                       "SliceThickness"),
            "no-spacing": ("SpacingBetweenSlices", "SliceThickness")}.get(geometry, ())
    if geometry in ("per-frame", "none"):
        drop = ("ImagePositionPatient", "ImageOrientationPatient", "SpacingBetweenSlices", "SliceThickness")
        drop += ("PixelSpacing",) if geometry == "none" else ()
    for name in drop:
        delattr(ds, name)

    def item(**attributes: object) -> pydicom.Dataset:
        inner = pydicom.Dataset()
        for name, value in attributes.items():
            setattr(inner, name, value)
        return inner

    if geometry in ("shared", "per-frame"):
        shared = item(
            PlaneOrientationSequence=[item(ImageOrientationPatient=orientation)],
            PixelMeasuresSequence=[item(PixelSpacing=spacing, SpacingBetweenSlices=2.5, SliceThickness=2.5)],
        )
        if geometry == "shared":
            shared.PlanePositionSequence = [item(ImagePositionPatient=position)]
        ds.SharedFunctionalGroupsSequence = [shared]
    if geometry == "per-frame":
        ds.PerFrameFunctionalGroupsSequence = [
            item(PlanePositionSequence=[item(ImagePositionPatient=[position[0], position[1], position[2] + 3 * f])])
            for f in range(frames)
        ]
    return _write(ds)


def reencoded_ct(syntax: str) -> bytes:
    """CT_small compressed with an installed encoder (``jpeg2000`` via openjpeg, ``rle`` via pylibjpeg-rle)."""
    ds = _dataset("CT_small.dcm")
    uid = {"jpeg2000": JPEG2000Lossless, "rle": RLELossless}[syntax]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.compress(uid)
    return _write(ds)


def dicom_declaring(rows: int, columns: int, frames: int) -> bytes:
    """CT_small whose header declares a huge image (the pixel data stays small)."""
    ds = _dataset("CT_small.dcm")
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    return _write(ds)


def damaged_pixels(name: str) -> bytes:
    """The file with the middle of its compressed pixel data (inside the fragment) overwritten with noise."""
    raw = bytearray(dicom_file(name))
    ds = _dataset(name)
    pixel_data = bytes(ds.PixelData)
    start = raw.rfind(pixel_data[-64:]) + 64 - len(pixel_data)  # where the element's value sits in the file
    assert start > 0
    lo, hi = start + len(pixel_data) // 3, start + 2 * len(pixel_data) // 3
    raw[lo:hi] = np.random.default_rng(7).integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
    return bytes(raw)


def without_preamble(data: bytes) -> bytes:
    return data[132:]


def truncated(data: bytes, keep: float = 0.6) -> bytes:
    return data[: int(len(data) * keep)]


def nifti_with(data: bytes, *, dims: tuple[int, ...] | None = None, datatype: int | None = None,
               vox_offset: float | None = None, magic: bytes | None = None) -> bytes:
    """A NIfTI-1 file (gzip'd if the input was) with raw header fields overwritten."""
    gz = data.startswith(b"\x1f\x8b")
    raw = bytearray(gzip.decompress(data) if gz else data)
    order = "<" if struct.unpack("<i", raw[:4])[0] == 348 else ">"
    if dims is not None:
        raw[40:56] = struct.pack(order + "8h", len(dims), *dims, *([1] * (7 - len(dims))))
    if datatype is not None:
        raw[70:72] = struct.pack(order + "h", datatype)
    if vox_offset is not None:
        raw[108:112] = struct.pack(order + "f", vox_offset)
    if magic is not None:
        raw[344:348] = magic
    return gzip.compress(bytes(raw), mtime=0) if gz else bytes(raw)


def gzip_bomb_nifti() -> bytes:
    """A tiny .nii.gz header declaring a modest volume followed by far more zeros than declared."""
    image = nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    return gzip.compress(image.to_bytes() + b"\0" * (64 * 1024 * 1024), compresslevel=9, mtime=0)


def synthetic_ct_volume(shape: tuple[int, int, int] = (48, 40, 6)) -> bytes:
    """A small CT-like .nii.gz in HU: a bright 'organ' ellipse in soft tissue, int16, non-trivial affine."""
    x, y = np.ogrid[: shape[0], : shape[1]]
    organ = ((x - shape[0] * 0.45) / (shape[0] * 0.25)) ** 2 + ((y - shape[1] * 0.5) / (shape[1] * 0.3)) ** 2 <= 1
    volume = np.full(shape, -80, np.int16)
    volume[organ] = 180
    volume += np.random.default_rng(3).normal(0, 5, shape).astype(np.int16)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = [-20.0, -16.0, 40.0]
    image = nib.Nifti1Image(volume, affine)
    image.header.set_xyzt_units("mm")
    return gzip.compress(image.to_bytes(), mtime=0)
