"""The worker's decode of a job's input, made to run in a decode process (medparse/decode_pool.py).

``decode_input`` turns the stored upload into what the rest of the job needs, and nothing bigger, so
that what crosses back from the decode process is small and the worker never holds a whole decoded
volume: a 2-D job's model-ready PNG (and a DICOM's header record), or a volume's *selected* slices as
the 8-bit images the model gets (windowed, one mapping for the volume, MONOCHROME1 inverted), which is
at most ``max_volume_voxels`` bytes where the float64 values were 8x that, or, for the 3-D model, the
NIfTI it sends. ``DecodedStack`` puts such slices back in the ``SliceStack`` shape that
workers/volume_pipeline.py segments.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medparse import imaging
from medparse.medical import inputs
from medparse.medical.formats import sniff_medical


@dataclass
class DecodedStack(inputs.SliceStack):
    """A ``SliceStack`` whose selected slices are already the model's 8-bit images.

    ``values`` is (S, H, W) or (S, H, W, 3) uint8; unselected slices are zeros that were never written
    (so never resident). ``source`` is how the decode process made the 8-bit slices.
    """

    decoded_source: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> dict[str, Any]:
        return self.decoded_source

    def slice_uint8(self, k: int) -> np.ndarray:
        return self.values[k]


@dataclass(frozen=True)
class DecodedVolume:
    """What crosses the pipe for a volume job; ``stack()`` rebuilds the slice stack in the worker."""

    #: the selected slices, in ``indices`` order (empty for the 3-D model, which gets ``nifti``)
    selected: np.ndarray
    slice_count: int
    slice_shape: tuple[int, ...]
    slice_axis: int
    indices: list[int]
    reading: dict[str, Any]
    source: dict[str, Any] | None
    record: inputs.MedicalRecord
    nifti: bytes | None

    def stack(self) -> DecodedStack:
        values = np.zeros((self.slice_count, *self.slice_shape), np.uint8)  # calloc: untouched pages cost nothing
        if self.selected.size:
            values[self.indices] = self.selected
        encode_nifti = None if self.nifti is None else functools.partial(_constant, self.nifti)
        return DecodedStack(
            values=values, slice_axis=self.slice_axis, indices=self.indices, window=None, invert=False,
            reading=self.reading, record=self.record, encode_nifti=encode_nifti, decoded_source=self.source or {},
        )


@dataclass(frozen=True)
class DecodedInput:
    """A 2-D job's prepared image (with a DICOM's ``job_medical`` row), or a volume."""

    prepared: imaging.PreparedImage | None = None
    medical: dict[str, Any] | None = None
    volume: DecodedVolume | None = None


def _constant(data: bytes) -> bytes:
    return data


def decode_input(image: bytes, options: dict[str, Any], settings: Any) -> DecodedInput:
    """Decode a job's upload (see the module docstring).

    Raises:
        ImageRejected: the input cannot be read.
        OptionRejected: an option does not fit the input.
    """
    limits = inputs.Limits.from_settings(settings)
    target, level = settings.endpoint_image_size, settings.endpoint_png_compress_level
    kind = sniff_medical(image)
    if kind is None:  # PNG, JPEG, TIFF
        prepared = imaging.prepare_image(
            image, target=target, png_compress_level=level, max_pixels=settings.max_image_pixels, options=options,
            max_frames=settings.max_image_frames,
        )
        return DecodedInput(prepared=prepared)
    if kind == "nifti":
        stack = inputs.open_volume(image, options, limits)
    else:
        # pydicom parses the upload here only: is_volume, the pixels and the stored header all read this dataset.
        upload = inputs.DicomUpload.open(image, options, max_pixels=limits.max_pixels, dicom_limits=limits.dicom)
        if not upload.is_volume:
            pixels, source = upload.load_2d()
            prepared = imaging.prepare_pixels(pixels, source, target=target, png_compress_level=level)
            return DecodedInput(prepared=prepared, medical=dataclasses.asdict(upload.record()))
        stack = upload.slice_stack(limits)
    return DecodedInput(volume=_compact(stack))


def _compact(stack: inputs.SliceStack) -> DecodedVolume:
    slice_count = int(stack.values.shape[0])
    slice_shape = tuple(int(d) for d in stack.values.shape[1:])
    if stack.encode_nifti is not None:  # the 3-D model: the volume goes out as a NIfTI, no 8-bit slices
        selected, source, nifti = np.zeros((0, *slice_shape), np.uint8), None, stack.encode_nifti()
    else:
        selected = np.empty((len(stack.indices), *slice_shape), np.uint8)
        for i, k in enumerate(stack.indices):
            selected[i] = stack.slice_uint8(k)
        source, nifti = stack.source, None
    return DecodedVolume(
        selected=selected, slice_count=slice_count, slice_shape=slice_shape, slice_axis=stack.slice_axis,
        indices=list(stack.indices), reading=stack.reading, source=source, record=stack.record, nifti=nifti,
    )
