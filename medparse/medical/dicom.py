"""DICOM uploads: checked from the header before any pixel is decoded, then read as the samples do.

Before pydicom parses an upload, ``dicom_scan`` walks its raw structure within the ``max_dicom_*``
limits (a deflated dataset is inflated only when it fits); then the image attributes are checked
against the pixel limit and against the Pixel Data actually present, all before any decode.

Reading follows the samples (protocol notes 4.1/4.2: ``pixel_array * RescaleSlope + RescaleIntercept``)
plus what real files need: the Modality LUT (pydicom's ``apply_modality_lut``, or the rescale of an
enhanced multi-frame's functional groups), MONOCHROME1 inverted after windowing (so bright is dense
as in MONOCHROME2), YBR converted to RGB and PALETTE COLOR expanded by pydicom. Files are parsed with
``force=False``: an upload without the DICM preamble is not read as DICOM. Compressed transfer
syntaxes decode through the pydicom pixel plugins that are installed (pylibjpeg with libjpeg,
openjpeg and rle; pyjpegls); one without an available decoder is refused up front.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder, pixel_array
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID

from medparse.imaging import ImageRejected
from medparse.imaging import quiet_warnings as quiet
from medparse.medical.dicom_scan import DicomLimits, Layout, scan

# Never log DICOM header values (DEVELOPERS.md): pydicom reports an invalid value *with the value*, as a warning
# and on its logger, wherever an element is first read (``quiet`` silences warnings only, only where it is used).
# Validation only warns, so ignoring it changes no verdict; pydicom's logger keeps its errors.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
logging.getLogger("pydicom").setLevel(logging.ERROR)

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
#: Photometric interpretations we can turn into gray or RGB pixels.
SUPPORTED_PHOTOMETRIC = frozenset(
    {*MONOCHROME, "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "YBR_PARTIAL_420", "PALETTE COLOR"}
)
_PIXEL_DATA_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass(frozen=True)
class DicomHeader:
    """A parsed upload whose pixel data is present but not decoded yet."""

    dataset: Dataset
    rows: int
    columns: int
    frames: int
    samples_per_pixel: int
    photometric: str
    transfer_syntax: str
    transfer_syntax_name: str
    modality: str | None

    def details(self) -> dict[str, Any]:
        return {
            "frames": self.frames, "photometric": self.photometric, "transfer_syntax": self.transfer_syntax,
            "modality": self.modality, "samples_per_pixel": self.samples_per_pixel,
        }


def corrupt(detail: str = "") -> ImageRejected:
    extra = f" ({detail})" if detail else ""
    return ImageRejected("corrupt_image", f"the DICOM file is damaged or truncated{extra}; export it again")


def open_dicom(data: bytes, *, max_pixels: int, limits: DicomLimits | None = None) -> DicomHeader:
    """Parse and check an upload; nothing is decoded yet.

    The structure is walked first (``dicom_scan``: file meta, inflated size of a deflated dataset,
    elements, nesting, Pixel Data), so pydicom only parses what is within ``limits``; then the image
    attributes are checked against each other and against the Pixel Data actually present.

    Raises:
        ImageRejected: not readable DICOM, no image in it, an unsupported layout or transfer
            syntax, more than ``max_pixels`` (rows x columns x frames) or ``limits.max_frames``
            declared, pixel data shorter than declared, or a structure beyond ``limits``.
    """
    limits = limits or DicomLimits.defaults()
    layout = scan(data, limits)
    with quiet():
        try:
            ds = _read(data, layout)
            ds.get("PixelData")  # parse lazily-read elements now, inside the guard
            modality = ds.get("Modality")  # converted now, inside the guard (a damaged VR raises NotImplementedError)
            modality = str(modality) if modality else None
        except MemoryError:
            raise  # over the decode budget (medparse/decode_pool.py), not a damaged file
        except Exception as exc:  # pydicom raises many types on hostile input
            raise corrupt(type(exc).__name__) from exc
    if "PixelData" not in ds:
        if any(tag in ds for tag in _PIXEL_DATA_TAGS):
            raise ImageRejected("unsupported_format", "DICOM float pixel data is not supported; export integer pixels")
        raise ImageRejected("unsupported_format", "the DICOM file holds no image (no Pixel Data); upload an image")
    rows, columns, frames, samples, photometric = _check_image(ds, layout, max_pixels, limits)
    syntax = UID(layout.transfer_syntax)
    return DicomHeader(
        dataset=ds, rows=rows, columns=columns, frames=frames, samples_per_pixel=samples,
        photometric=photometric, transfer_syntax=str(syntax), transfer_syntax_name=str(syntax.name),
        modality=modality,
    )


def check_headers(data: bytes, *, max_pixels: int, limits: DicomLimits) -> None:
    """What ``open_dicom`` refuses before pydicom parses the dataset, without pydicom parsing it.

    For the gateway process, ahead of the full decode elsewhere: the structure within ``limits``, the
    declared image against ``max_pixels``/``max_frames`` and against the Pixel Data present. A deflated
    dataset is only counted against ``max_inflated_bytes`` here (nothing kept); its structure is walked
    where it is parsed.

    Raises:
        ImageRejected: as ``open_dicom`` would for these reasons.
    """
    layout = scan(data, limits, inflate=False)
    if not layout.walked:
        return
    if layout.pixel_length is None and layout.fragments is None:
        raise ImageRejected("unsupported_format", "the DICOM file holds no image (no Pixel Data); upload an image")
    with quiet():
        try:  # the few attributes the walk kept, read by pydicom: a few hundred bytes
            ds = read_dataset(io.BytesIO(layout.image_attributes), is_implicit_VR=not layout.explicit_vr,
                              is_little_endian=layout.little_endian)
        except Exception as exc:
            raise corrupt("missing or invalid image attributes") from exc
    _check_image(ds, layout, max_pixels, limits)


def _check_image(
    ds: Dataset, layout: Layout, max_pixels: int, limits: DicomLimits
) -> tuple[int, int, int, int, str]:
    """(rows, columns, frames, samples, photometric) once the declared image fits every limit and the file."""
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
        bits = int(ds.BitsAllocated)
        photometric = str(ds.get("PhotometricInterpretation") or "").strip().upper()
    except Exception as exc:
        raise corrupt("missing or invalid image attributes") from exc
    if rows < 1 or columns < 1 or frames < 1:
        raise ImageRejected("empty_image", f"the DICOM image has no pixels ({columns}x{rows}, {frames} frames)")
    if rows * columns * frames > max_pixels:
        raise ImageRejected(
            "image_too_large",
            f"the DICOM image has {columns}x{rows} pixels in {frames} frames; the limit is {max_pixels} "
            "pixels, choose fewer frames or downscale it first",
        )
    if samples not in (1, 3) or bits not in (1, 8, 16, 32) or photometric not in SUPPORTED_PHOTOMETRIC:
        raise ImageRejected(
            "unsupported_format",
            f"DICOM pixels of {samples} samples, {bits} bits, {photometric or 'no'} photometric interpretation "
            "are not supported; export gray (MONOCHROME) or RGB pixels",
        )
    _check_pixel_data(ds, layout, frames)
    if frames > limits.max_frames:
        raise ImageRejected(
            "image_too_large",
            f"the DICOM image has {frames} frames; the limit is {limits.max_frames} (max_dicom_frames)",
        )
    _check_decoder(UID(layout.transfer_syntax))
    return rows, columns, frames, samples, photometric


def _read(data: bytes, layout: Layout) -> Dataset:
    """pydicom's dataset of a scanned upload; a deflated one from the dataset ``scan`` inflated within its cap."""
    if layout.inflated is None:
        return pydicom.dcmread(io.BytesIO(data), force=False)
    # The file meta alone (pydicom inflates nothing when no dataset follows), then the inflated dataset.
    meta = pydicom.dcmread(io.BytesIO(data[:layout.dataset_offset]), force=False)
    body = read_dataset(io.BytesIO(layout.inflated), is_implicit_VR=False, is_little_endian=True)
    ds = FileDataset(io.BytesIO(), body, preamble=meta.preamble, file_meta=meta.file_meta,
                     is_implicit_VR=False, is_little_endian=True)
    ds.set_original_encoding(False, True, body.original_character_set)
    return ds


def _check_pixel_data(ds: Dataset, layout: Layout, frames: int) -> None:
    """The Pixel Data present can hold what the attributes declare: 1 KB cannot hold 40 M frames."""
    syntax = UID(layout.transfer_syntax)
    encapsulated = syntax.is_transfer_syntax and syntax.is_encapsulated
    if layout.fragments is not None or encapsulated:
        fragments = layout.fragments or 0
        if frames > fragments:
            raise corrupt(f"{frames} frames declared, the pixel data holds {fragments} fragments")
        return
    if layout.pixel_length is None:
        return  # no Pixel Data: refused as such by the caller
    try:
        expected = int(get_expected_length(ds, "bytes"))
    except Exception as exc:
        raise corrupt("missing or invalid image attributes") from exc
    if layout.pixel_length < expected:
        raise corrupt(f"the pixel data holds {layout.pixel_length} bytes, the attributes declare {expected}")


def _check_decoder(syntax: Any) -> None:
    try:
        available = get_decoder(syntax).is_available
    except (NotImplementedError, ValueError):
        available = False
    if not available:
        name = getattr(syntax, "name", str(syntax))
        raise ImageRejected(
            "unsupported_format",
            f"DICOM transfer syntax {name} ({syntax}) cannot be decoded here; export uncompressed, "
            "JPEG, JPEG-LS, JPEG 2000 or RLE",
        )


def decode(header: DicomHeader, frames: Sequence[int] | None = None) -> np.ndarray:
    """Pixels in modality units: (R, C) or (R, C, 3) for one frame, (F, R, C[, 3]) for several.

    ``frames`` None decodes every frame; a one-element list gives a single 2-D image.
    """
    ds = header.dataset
    try:
        with quiet():
            if frames is not None and len(frames) == 1:
                raw = pixel_array(ds, index=frames[0]) if header.frames > 1 else pixel_array(ds)
                return _to_values(header, raw, frames[0])
            raw = pixel_array(ds)
            if header.frames == 1:
                raw = raw[None]
            picked = range(header.frames) if frames is None else frames
            return np.stack([_to_values(header, raw[i], i) for i in picked])
    except ImageRejected:
        raise
    except BaseException as exc:  # decoders raise many types on damaged data
        if not is_decoder_failure(exc):
            raise
        raise corrupt(f"{type(exc).__name__}: {' '.join(str(exc).split())[:100]}") from exc


def is_decoder_failure(exc: BaseException) -> bool:
    """Any Exception, and the Rust decoders' (pylibjpeg-rle) pyo3 PanicException, a BaseException; not a
    MemoryError, which is the decode going over its budget (``image_too_complex``), not damaged data."""
    if isinstance(exc, MemoryError):
        return False
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def _to_values(header: DicomHeader, raw: np.ndarray, frame: int) -> np.ndarray:
    ds = header.dataset
    if header.photometric == "PALETTE COLOR":
        return np.asarray(apply_color_lut(raw, ds))
    if header.samples_per_pixel != 1:
        return raw  # pydicom already converted YBR to RGB
    if raw.dtype == np.bool_:
        raw = raw.astype(np.uint8)
    if "ModalityLUTSequence" in ds or "RescaleSlope" in ds or "RescaleIntercept" in ds:
        return np.asarray(apply_modality_lut(raw, ds))
    rescale = _functional_group_rescale(ds, frame)
    if rescale is None:
        return raw
    slope, intercept = rescale
    return raw.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def _functional_group_rescale(ds: Dataset, frame: int) -> tuple[float, float] | None:
    """Rescale of an enhanced multi-frame image, from its per-frame or shared functional groups."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        sequence = ds.get(groups)
        if not sequence or index >= len(sequence):
            continue
        transform = sequence[index].get("PixelValueTransformationSequence")
        if transform:
            item = transform[0]
            return float(item.get("RescaleSlope", 1.0)), float(item.get("RescaleIntercept", 0.0))
    return None


def finish_uint8(header: DicomHeader, pixels: np.ndarray) -> tuple[np.ndarray, bool]:
    """MONOCHROME1 shows low values bright: invert after windowing so the model sees MONOCHROME2."""
    if header.photometric == "MONOCHROME1":
        return np.subtract(255, pixels, dtype=np.uint8), True
    return pixels, False


def header_bytes(header: DicomHeader) -> bytes:
    """The dataset without its pixel data, as a DICOM file: what a SEG needs to reference its source."""
    ds = header.dataset
    copy = Dataset(ds)
    copy.file_meta = FileMetaDataset(ds.file_meta)
    copy.preamble = b"\x00" * 128
    for tag in _PIXEL_DATA_TAGS:
        if tag in copy:
            delattr(copy, tag)
    buffer = io.BytesIO()
    with quiet():
        copy.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def read_header_bytes(blob: bytes) -> Dataset:
    """Inverse of ``header_bytes`` (our own stored blob, read like any Part 10 file)."""
    with quiet():
        return pydicom.dcmread(io.BytesIO(blob), force=False)
