"""DICOM and NIfTI uploads for the rest of the service: the submit-time probe and the worker's readers.

An upload is a **2-D job** (a single-frame DICOM, or one ``frame`` of a multi-frame DICOM) or a
**volume job** (a NIfTI, or a multi-frame DICOM without ``frame``: every frame is a slice). A volume
is segmented slice by slice with the 2-D model, or sent whole to the 3-D model (``model``
``medimageparse-3d``, NIfTI only). ``probe`` runs every check the worker would (limits, options that
must fit the input, a full decode), so a job that is accepted does not fail on its input later.
"""

from __future__ import annotations

import functools
import gzip
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from medparse import imaging
from medparse.imaging import ImageInfo, ImageRejected
from medparse.medical import dicom, nifti, windowing
from medparse.medical.dicom_scan import DicomLimits
from medparse.medical.errors import OptionRejected
from medparse.medical.formats import GZIP_MAGIC, sniff_medical
from medparse.medical.options import DEFAULT_SLICE_AXIS, MedicalOptions


@dataclass(frozen=True)
class Limits:
    max_pixels: int
    max_volume_voxels: int
    max_volume_bytes: int
    max_volume_slices: int
    dicom: DicomLimits
    max_nifti_extensions: int
    max_image_frames: int

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        return cls(
            max_pixels=settings.max_image_pixels,
            max_volume_voxels=settings.max_volume_voxels,
            max_volume_bytes=settings.max_volume_bytes,
            max_volume_slices=settings.max_volume_slices,
            dicom=DicomLimits.from_settings(settings),
            max_nifti_extensions=settings.max_nifti_extensions,
            max_image_frames=settings.max_image_frames,
        )


@dataclass(frozen=True)
class MedicalRecord:
    """What a finished job keeps besides its masks (the ``job_medical`` row)."""

    source_kind: str
    source_header: bytes | None
    #: a volume's shape and slice axis: set by the worker from its ``SliceStack`` (workers/volume_pipeline.py)
    volume_shape: list[int] | None = None
    slice_axis: int | None = None
    affine: list[list[float]] | None = None
    encoding: str | None = None
    data: bytes | None = None


@dataclass
class SliceStack:
    """A volume as the worker segments it: slice-major values, the selection, one intensity mapping.

    What only some callers use is made on first use: the intensity ``bounds`` (a pass over the whole
    selection, which the 3-D model does not need) and the 3-D model's NIfTI (which an overlay does not
    need).
    """

    #: (S, H, W) or (S, H, W, 3), in modality units; slice k of the input is ``values[k]``
    values: np.ndarray
    slice_axis: int
    #: the selected slices: a list (2-D model, at most max_volume_slices) or a range (3-D model, all)
    indices: Sequence[int]
    #: the job's ``window`` option, which ``bounds`` applies
    window: str | dict[str, float] | None
    invert: bool
    #: how the input was read, for provenance; its ``normalization`` is a placeholder for ``source_with``,
    #: there so that the key keeps its place in the stored JSON
    reading: dict[str, Any]
    record: MedicalRecord
    #: makes what the 3-D model gets, the (frame of the) NIfTI as .nii.gz bytes; None for a 2-D model job
    encode_nifti: Callable[[], bytes] | None = None

    @property
    def slice_shape(self) -> tuple[int, int]:
        return int(self.values.shape[1]), int(self.values.shape[2])

    @property
    def shape(self) -> tuple[int, ...]:
        dims = list(self.slice_shape)
        dims.insert(self.slice_axis, int(self.values.shape[0]))
        return tuple(dims)

    @cached_property
    def bounds(self) -> windowing.Bounds | None:
        """One mapping for all selected slices, so that every slice gets the same contrast.

        None for RGB (scaled slice by slice) and for 8-bit values without a window (used as they are).
        """
        gray = self.values.ndim == 3
        if not gray or (self.values.dtype == np.uint8 and self.window is None):
            return None
        selected = self.values if len(self.indices) == self.values.shape[0] else self.values[self.indices]
        return windowing.bounds_for(selected, self.window)

    @property
    def source(self) -> dict[str, Any]:
        """``preprocessing.source`` of a job whose slices are sent as 8-bit images."""
        bounds = self.bounds
        return self.source_with({**bounds.params, "scope": "volume"} if bounds else {"method": "none"})

    def source_with(self, normalization: dict[str, Any]) -> dict[str, Any]:
        return {**self.reading, "normalization": normalization}

    def slice_uint8(self, k: int) -> np.ndarray:
        values = self.values[k]
        if values.ndim == 3 or self.bounds is None:
            pixels, _ = windowing.to_uint8(values, None)
        else:
            pixels = self.bounds.apply(values)
        return np.subtract(255, pixels, dtype=np.uint8) if self.invert else np.ascontiguousarray(pixels)


@dataclass(frozen=True)
class DicomUpload:
    """A DICOM upload parsed once, with the job's options.

    The worker opens a job's DICOM once: whether it is a volume, its pixels (or slice stack) and its
    stored header all come from this dataset, as a pydicom parse costs more than decoding a small
    uncompressed image.
    """

    header: dicom.DicomHeader
    options: MedicalOptions

    @classmethod
    def open(
        cls, data: bytes, options: Mapping[str, Any] | None, *, max_pixels: int, dicom_limits: DicomLimits | None = None
    ) -> DicomUpload:
        """Raises: ImageRejected: see ``dicom.open_dicom`` (``dicom_limits`` default: the settings' defaults)."""
        return cls(dicom.open_dicom(data, max_pixels=max_pixels, limits=dicom_limits), MedicalOptions.from_job(options))

    @property
    def is_volume(self) -> bool:
        """A multi-frame file without ``frame``: every frame is a slice."""
        return self.header.frames > 1 and self.options.frame is None

    def load_2d(self) -> tuple[np.ndarray, dict[str, Any]]:
        """A 2-D job's pixels as uint8 (H, W) or (H, W, 3), and how they were made (provenance)."""
        header, opts = self.header, self.options
        frame = opts.frame or 0
        values = dicom.decode(header, [frame])
        pixels, normalization = windowing.to_uint8(values, opts.window)
        pixels, inverted = dicom.finish_uint8(header, pixels)
        source = {
            "format": "dicom", "transfer_syntax": header.transfer_syntax_name, "photometric": header.photometric,
            "frame": frame, "modality_lut": _modality_lut(header), "inverted": inverted,
            "normalization": normalization, "options": opts.echo(),
        }
        return np.ascontiguousarray(pixels), source

    def record(self) -> MedicalRecord:
        """The ``job_medical`` row of a 2-D job: the header without its pixels, for DICOM SEG output."""
        return MedicalRecord(source_kind="dicom", source_header=dicom.header_bytes(self.header))

    def slice_stack(self, limits: Limits) -> SliceStack:
        """A volume job's frames as slices.

        Raises:
            OptionRejected: an option does not fit this file.
            ImageRejected: the pixel data cannot be decoded.
        """
        header, opts = self.header, self.options
        _check_dicom_options(header, opts, limits)
        indices = opts.slice_indices(header.frames, limit=limits.max_volume_slices)
        values = dicom.decode(header, None)
        invert = header.photometric == "MONOCHROME1"
        reading = {
            "format": "dicom", "transfer_syntax": header.transfer_syntax_name, "photometric": header.photometric,
            "frames": header.frames, "slices": len(indices), "modality_lut": _modality_lut(header),
            "inverted": invert, "normalization": None, "options": opts.echo(),
        }
        return SliceStack(
            values=values, slice_axis=0, indices=indices, window=opts.window, invert=invert, reading=reading,
            record=self.record(),
        )


def probe(data: bytes, options: Mapping[str, Any] | None, limits: Limits) -> ImageInfo | None:
    """ImageInfo (with ``details``) of a DICOM/NIfTI upload; None when the upload is neither.

    Raises:
        ImageRejected: the file is unreadable, unsupported or too large.
        OptionRejected: an option does not fit this input.
    """
    kind = sniff_medical(data)
    if kind is None:
        return None
    opts = MedicalOptions.from_job(options)
    if kind == "dicom":
        return _probe_dicom(data, opts, limits)
    return _probe_nifti(data, opts, limits)


def check_headers(data: bytes, options: Mapping[str, Any] | None, limits: Limits) -> None:
    """The header-only part of ``probe``, for any upload: nothing proportional to a declared size is built.

    What the gateway process checks itself before a full decode runs in a decode process: DICOM
    structure and declared image (``dicom.check_headers``), a NIfTI header and the options that must fit
    it, a PNG/JPEG/TIFF's declared size and pages (``imaging.check_headers``).

    Raises:
        ImageRejected, OptionRejected: as ``probe`` would for these reasons.
    """
    kind = sniff_medical(data)
    if kind is None:
        imaging.check_headers(data, max_pixels=limits.max_pixels, max_frames=limits.max_image_frames)
        return
    opts = MedicalOptions.from_job(options)
    if kind == "dicom":
        dicom.check_headers(data, max_pixels=limits.max_pixels, limits=limits.dicom)
        return
    header = nifti.parse_header(
        data, max_voxels=limits.max_volume_voxels, max_bytes=limits.max_volume_bytes,
        max_extensions=limits.max_nifti_extensions,
    )
    _check_nifti_options(header, opts, limits)


def _probe_dicom(data: bytes, opts: MedicalOptions, limits: Limits) -> ImageInfo:
    header = dicom.open_dicom(data, max_pixels=limits.max_pixels, limits=limits.dicom)
    _check_dicom_options(header, opts, limits)
    frames = [opts.frame] if opts.frame is not None else (None if header.frames > 1 else [0])
    dicom.decode(header, frames)  # a full decode: damaged pixel data is a 4xx now, not a failed job later
    details: dict[str, Any] = {"kind": "image", **header.details()}
    if opts.frame is None and header.frames > 1:
        details.update(kind="volume", shape=[header.frames, header.rows, header.columns], slice_axis=0,
                       slices=opts.slice_count(header.frames))
    bits = int(header.dataset.get("BitsStored") or header.dataset.get("BitsAllocated") or 8)
    return ImageInfo(
        format="dicom", width=header.columns, height=header.rows, channels=header.samples_per_pixel,
        bit_depth=bits, details=details,
    )


def _check_dicom_options(header: dicom.DicomHeader, opts: MedicalOptions, limits: Limits) -> None:
    if opts.uses_3d_model:
        raise OptionRejected("options.model", "the 3-D model takes NIfTI volumes; use medimageparse for DICOM")
    if opts.slice_axis is not None:
        raise OptionRejected("options.slice_axis", "applies to NIfTI volumes; the frames of a DICOM are its slices")
    if opts.frame is not None:
        if opts.slices is not None:
            raise OptionRejected("options.slices", "give either frame (one frame) or slices (several), not both")
        if not 0 <= opts.frame < header.frames:
            last = header.frames - 1
            raise OptionRejected("options.frame", f"this DICOM has {header.frames} frame(s): use 0..{last}")
        return
    if header.frames == 1 and opts.slices is not None:
        raise OptionRejected("options.slices", "this DICOM has a single frame; slices apply to multi-frame files")
    if header.frames > 1 and opts.slice_count(header.frames) > limits.max_volume_slices:
        raise OptionRejected("options.slices", f"at most {limits.max_volume_slices} frames per job; choose slices")


def _probe_nifti(data: bytes, opts: MedicalOptions, limits: Limits) -> ImageInfo:
    header = nifti.parse_header(
        data, max_voxels=limits.max_volume_voxels, max_bytes=limits.max_volume_bytes,
        max_extensions=limits.max_nifti_extensions,
    )
    axis, indices = _check_nifti_options(header, opts, limits)
    values, _ = nifti.load(data, header, frame=opts.frame)
    rows, cols = (d for i, d in enumerate(header.spatial_shape) if i != axis)
    details: dict[str, Any] = {
        "kind": "volume", "shape": list(header.spatial_shape), "slice_axis": axis, "slices": len(indices),
        "dtype": str(values.dtype),
    }
    if header.frames > 1:
        details.update(frames=header.frames, frame=opts.frame or 0)
    return ImageInfo(
        format="nifti", width=cols, height=rows, channels=1, bit_depth=header.dtype.itemsize * 8, details=details,
    )


def _check_nifti_options(
    header: nifti.NiftiHeader, opts: MedicalOptions, limits: Limits
) -> tuple[int, Sequence[int]]:
    if opts.frame is not None and not 0 <= opts.frame < header.frames:
        what = f"has {header.frames} volumes: use 0..{header.frames - 1}" if header.frames > 1 else "is 3-D"
        raise OptionRejected("options.frame", f"frame picks a volume of a 4-D NIfTI; this one {what}")
    if opts.uses_3d_model:
        if opts.slices is not None or opts.slice_axis is not None:
            raise OptionRejected("options.slices", "the 3-D model segments the whole volume; drop slices/slice_axis")
        return DEFAULT_SLICE_AXIS, range(header.spatial_shape[DEFAULT_SLICE_AXIS])  # one call: no slice limit
    axis = DEFAULT_SLICE_AXIS if opts.slice_axis is None else opts.slice_axis
    rows, cols = (d for i, d in enumerate(header.spatial_shape) if i != axis)
    if rows * cols > limits.max_pixels:
        raise ImageRejected("image_too_large", f"slices of {cols}x{rows} pixels exceed the {limits.max_pixels} limit")
    return axis, opts.slice_indices(header.spatial_shape[axis], limit=limits.max_volume_slices)


def load_2d(data: bytes, options: Mapping[str, Any] | None, max_pixels: int) -> tuple[np.ndarray, dict[str, Any]]:
    """A 2-D DICOM job's pixels as uint8 (H, W) or (H, W, 3), and how they were made (provenance)."""
    return DicomUpload.open(data, options, max_pixels=max_pixels).load_2d()


def open_volume(data: bytes, options: Mapping[str, Any] | None, limits: Limits) -> SliceStack:
    """A volume job's input as a slice stack (NIfTI, or a multi-frame DICOM's frames)."""
    if sniff_medical(data) == "dicom":
        upload = DicomUpload.open(data, options, max_pixels=limits.max_pixels, dicom_limits=limits.dicom)
        return upload.slice_stack(limits)
    return _nifti_stack(data, MedicalOptions.from_job(options), limits)


def _nifti_stack(data: bytes, opts: MedicalOptions, limits: Limits) -> SliceStack:
    header = nifti.parse_header(
        data, max_voxels=limits.max_volume_voxels, max_bytes=limits.max_volume_bytes,
        max_extensions=limits.max_nifti_extensions,
    )
    axis, indices = _check_nifti_options(header, opts, limits)
    values, image = nifti.load(data, header, frame=opts.frame)
    record = MedicalRecord(source_kind="nifti", source_header=nifti.header_blob(image), affine=nifti.affine_of(image))
    reading: dict[str, Any] = {
        "format": "nifti", "nifti_version": header.version, "dtype": str(values.dtype), "slice_axis": axis,
        "slices": len(indices), "options": opts.echo(), "normalization": None,
    }
    if header.frames > 1:
        reading["frame"] = opts.frame or 0
    encode_nifti = None
    if opts.uses_3d_model:
        # Made only when sent; it keeps the image's type and affine, not the image, which holds the inflated file.
        image_type = nifti.type_for(image.header)
        encode_nifti = functools.partial(_nifti_for_3d, data, header, values, image_type, image.affine)
    return SliceStack(
        values=np.moveaxis(values, axis, 0), slice_axis=axis, indices=indices, window=opts.window, invert=False,
        reading=reading, record=record, encode_nifti=encode_nifti,
    )


def _nifti_for_3d(
    data: bytes, header: nifti.NiftiHeader, values: np.ndarray, image_type: nifti.AnyNiftiType, affine: np.ndarray
) -> bytes:
    """What the 3-D endpoint gets: the upload itself (gzip'd if raw); one frame re-encoded for a 4-D file."""
    if header.frames == 1:
        return data if data.startswith(GZIP_MAGIC) else gzip.compress(data, compresslevel=1, mtime=0)
    with nifti.quiet():
        # An explicit dtype: nibabel refuses int64 data without one (and the frame keeps the file's type).
        frame = image_type(values, affine, dtype=values.dtype)
        return gzip.compress(frame.to_bytes(), compresslevel=1, mtime=0)


def _modality_lut(header: dicom.DicomHeader) -> dict[str, Any] | None:
    ds = header.dataset
    if "ModalityLUTSequence" in ds:
        return {"type": "sequence"}
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        return {"slope": float(ds.get("RescaleSlope", 1.0)), "intercept": float(ds.get("RescaleIntercept", 0.0))}
    rescale = dicom._functional_group_rescale(ds, 0)
    if rescale is not None:
        return {"slope": rescale[0], "intercept": rescale[1], "from": "functional groups"}
    return None
