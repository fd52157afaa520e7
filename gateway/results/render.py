"""Rendering a succeeded job's result in every output format: pure functions of what was loaded.

Everything here runs in a decode process (medparse/decode_pool.py): the arguments and results are
picklable, and a refusal is a domain error (gateway/errors.py), which the pool hands back as itself.
Every answer carries the job's provenance where the format has room (RLE JSON, NPZ member, PNG
text chunk, NIfTI extension, SEG algorithm attributes).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import orjson

from db.job_record import Job, MaskSummary, MedicalRecord, StoredMask
from gateway.errors import BadQueryField, Conflict, Gone, MaskNotFound
from medparse import imaging, masks
from medparse.medical import dicom, geometry, inputs, nifti, volumes
from medparse.medical.formats import sniff_medical
from medparse.outputs import archive, overlay, rle
from medparse.outputs.dicom_seg import SegUnavailable, dicom_seg_bytes
from medparse.settings import Settings

FORMATS = ("png", "npz", "rle", "overlay", "nifti", "dicom-seg")
_PROVENANCE_HEADER_KEYS = ("model", "deployment", "endpoint_client_request_id", "software_version")


def decode_masks(stored: Sequence[StoredMask]) -> list[np.ndarray]:
    """0/1 arrays of stored 2-D masks (CPU work: in a decode process)."""
    return [masks.decode_mask(m.data, m.height, m.width) for m in stored]


def mask_png_of(stored: list[StoredMask]) -> bytes:
    """The first mask as a 0/255 PNG (runs in a decode process)."""
    return masks.mask_png(decode_masks(stored)[0])


def masks_npz_of(stored: list[StoredMask]) -> bytes:
    """All masks as one .npz (runs in a decode process)."""
    return masks.masks_npz(np.stack(decode_masks(stored)))


def stored_bytes(stored: Sequence[StoredMask]) -> int:
    """Compressed bytes decoding ``stored`` reads (the decode pool's in-flight bytes)."""
    return sum(len(m.data or b"") for m in stored)


@dataclass(frozen=True)
class Loaded:
    """A succeeded job and what rendering its result reads (picklable: it travels to a decode process)."""

    job: Job
    summaries: list[MaskSummary]
    #: a 2-D job's stored masks, or None for a volume (whose masks are in ``medical``)
    mask_rows: list[StoredMask] | None
    #: the job's medical side (db/medical.py), if any
    medical: MedicalRecord | None
    #: the upload, when the format needs it (None also when retention deleted it)
    image: bytes | None

    # Decoded on first use, by ``render`` in its thread: CPU work stays off the event loop.
    @cached_property
    def image_masks(self) -> np.ndarray | None:
        """The decoded 2-D masks (N, H, W), or None for a volume."""
        return None if self.mask_rows is None else np.stack(decode_masks(self.mask_rows))

    @cached_property
    def volume(self) -> volumes.VolumeMasks | None:
        if self.mask_rows is not None or self.medical is None:
            return None
        return _decode_volume(self.medical, len(self.summaries))

    @property
    def stored_bytes(self) -> int:
        """Compressed bytes a rendering decodes (the decode pool's in-flight bytes)."""
        masks_bytes = stored_bytes(self.mask_rows or ())
        volume_bytes = len(self.medical.data or b"") if self.medical is not None else 0
        return masks_bytes + volume_bytes + len(self.image or b"")

    @property
    def provenance(self) -> dict[str, Any]:
        return dict(self.job.result_meta or {})


@dataclass(frozen=True)
class Rendered:
    body: bytes
    content_type: str
    filename: str
    headers: dict[str, str]


def provenance_header(provenance: dict[str, Any]) -> str:
    compact = {k: provenance.get(k) for k in _PROVENANCE_HEADER_KEYS if provenance.get(k) is not None}
    return orjson.dumps(compact).decode("ascii", "replace")


def _decode_volume(medical: MedicalRecord, count: int) -> volumes.VolumeMasks:
    assert medical.volume_shape is not None and medical.slice_axis is not None and medical.data is not None
    shape, axis = list(medical.volume_shape), int(medical.slice_axis)
    height, width = (d for i, d in enumerate(shape) if i != axis)
    return volumes.decode(medical.data, count, shape[axis], height, width, axis)


def render(loaded: Loaded, fmt: str, mask: int | None, slice_: int | None, settings: Settings) -> Rendered:
    """The body of one format (CPU- and memory-bound: runs in a decode process, medparse/decode_pool.py)."""
    count = len(loaded.summaries)
    if mask is not None and mask >= count:
        raise MaskNotFound(f"no mask {mask}; this job has {count}")
    job_id = str(loaded.job.id)
    if fmt == "png":
        return _png(loaded, mask or 0, slice_, job_id)
    if fmt == "npz":
        return _npz(loaded, mask, job_id)
    if fmt == "rle":
        return _rle(loaded, mask, job_id)
    if fmt == "overlay":
        return _overlay(loaded, mask, slice_, settings, job_id)
    if fmt == "nifti":
        return _nifti(loaded, mask, job_id)
    return _dicom_seg(loaded, job_id)


def _pick(items: Sequence[Any], mask: int | None) -> list[int]:
    return list(range(len(items))) if mask is None else [mask]


def _slice(volume: volumes.VolumeMasks, chosen: list[int], slice_: int | None) -> int:
    slices = volume.masks.shape[1]
    if slice_ is not None:
        if slice_ >= slices:
            raise BadQueryField("slice", f"this volume has {slices} slices along axis {volume.slice_axis}")
        return slice_
    areas = volume.masks[chosen].reshape(len(chosen), slices, -1).sum(axis=(0, 2))
    return int(np.argmax(areas))


def _png(loaded: Loaded, index: int, slice_: int | None, job_id: str) -> Rendered:
    if loaded.image_masks is not None:
        return Rendered(masks.mask_png(loaded.image_masks[index]), "image/png", f"{job_id}-mask{index}.png", {})
    assert loaded.volume is not None
    k = _slice(loaded.volume, [index], slice_)
    return Rendered(
        masks.mask_png(loaded.volume.masks[index, k]), "image/png", f"{job_id}-mask{index}-slice{k}.png",
        {"Medparse-Slice": str(k)},
    )


def _npz(loaded: Loaded, mask: int | None, job_id: str) -> Rendered:
    arrays: dict[str, np.ndarray] = {}
    if loaded.image_masks is not None:
        arrays["masks"] = loaded.image_masks[_pick(loaded.summaries, mask)]
    else:
        assert loaded.volume is not None
        arrays["masks"] = loaded.volume.in_input_order()[_pick(loaded.summaries, mask)]
        if loaded.medical is not None and loaded.medical.affine is not None:
            arrays["affine"] = np.asarray(loaded.medical.affine, np.float64)
    body = archive.npz_bytes(arrays, loaded.provenance)
    return Rendered(body, "application/octet-stream", f"{job_id}-masks.npz", {})


def _entries(loaded: Loaded, chosen: list[int]) -> list[dict[str, Any]]:
    return [
        {"index": loaded.summaries[i].index, "prompt": loaded.summaries[i].prompt,
         "label": loaded.summaries[i].label}
        for i in chosen
    ]


def _rle(loaded: Loaded, mask: int | None, job_id: str) -> Rendered:
    chosen = _pick(loaded.summaries, mask)
    if loaded.image_masks is not None:
        document = rle.image_document(loaded.image_masks[chosen], _entries(loaded, chosen), loaded.provenance)
    else:
        assert loaded.volume is not None
        document = rle.volume_document(
            loaded.volume.masks[chosen], loaded.volume.slice_axis, list(loaded.volume.shape),
            _entries(loaded, chosen), loaded.provenance,
        )
    return Rendered(orjson.dumps(document), "application/json", f"{job_id}-rle.json", {})


def _overlay(loaded: Loaded, mask: int | None, slice_: int | None, settings: Settings, job_id: str) -> Rendered:
    if loaded.image is None:
        raise Gone("the job's input was deleted (retention); the overlay needs it", code="input_deleted")
    chosen = _pick(loaded.summaries, mask)
    options = loaded.job.options or {}
    headers: dict[str, str] = {}
    if loaded.image_masks is not None:
        pixels = _input_pixels(loaded.image, options, settings)
        shown = loaded.image_masks[chosen]
        name = f"{job_id}-overlay.png"
    else:
        assert loaded.volume is not None
        k = _slice(loaded.volume, chosen, slice_)
        stack = inputs.open_volume(loaded.image, options, inputs.Limits.from_settings(settings))
        pixels, shown = stack.slice_uint8(k), loaded.volume.masks[chosen, k]
        headers["Medparse-Slice"] = str(k)
        name = f"{job_id}-overlay-slice{k}.png"
    legend = [(loaded.summaries[i].prompt, loaded.summaries[i].label) for i in chosen]
    body = overlay.overlay_png(pixels, shown, legend, overlay.provenance_text(loaded.provenance))
    return Rendered(body, "image/png", name, headers)


def _input_pixels(image: bytes, options: dict[str, Any], settings: Settings) -> np.ndarray:
    """A 2-D job's input as 8-bit pixels; a DICOM read within the settings' limits, as the probe and the worker
    read it (``imaging.load_pixels`` would apply the default ``max_dicom_*``)."""
    if sniff_medical(image) != "dicom":
        return imaging.load_pixels(
            image, max_pixels=settings.max_image_pixels, options=options, max_frames=settings.max_image_frames
        )
    limits = inputs.Limits.from_settings(settings)
    upload = inputs.DicomUpload.open(image, options, max_pixels=limits.max_pixels, dicom_limits=limits.dicom)
    return upload.load_2d()[0]


def _nifti(loaded: Loaded, mask: int | None, job_id: str) -> Rendered:
    medical = loaded.medical
    kind = medical.source_kind if medical is not None else None
    source_header = medical.source_header if medical is not None else None
    dicom_volume = kind == "dicom" and bool(source_header)
    if medical is None or loaded.volume is None or not (kind == "nifti" or dicom_volume):
        raise Conflict(
            "nifti output exists for NIfTI inputs and DICOM volumes; use png, npz or rle", code="format_not_available"
        )
    if mask is None:
        labels = loaded.volume.label_volume()
    else:
        labels = loaded.volume.in_input_order(mask).astype(np.uint8)
    provenance = loaded.provenance
    description = f"medparse labels {provenance.get('model', '')} {provenance.get('software_version', '')}"
    header_blob, affine, xform_code = source_header, medical.affine, None
    headers: dict[str, str] = {}
    if dicom_volume:
        assert source_header is not None
        # A DICOM volume is (F, R, C); the label map is laid out (C, R, F): i = column, j = row, k = frame.
        found = geometry.frame_geometry(dicom.read_header_bytes(source_header))
        labels = np.ascontiguousarray(np.transpose(labels, (2, 1, 0)))
        header_blob, affine = None, found.nifti_affine().tolist()
        xform_code = 1 if found.known else None  # NIFTI_XFORM_SCANNER_ANAT; nibabel's default otherwise
        provenance = {**provenance, **found.provenance()}
        description = f"{description} geometry={found.source}"
        headers["Medparse-Geometry"] = found.source
    body = nifti.label_volume_bytes(
        labels, header_blob, affine, description=description, xform_code=xform_code,
        comment=json.dumps({"labels": _entries(loaded, _pick(loaded.summaries, mask)), "provenance": provenance},
                           default=str).encode(),
    )
    return Rendered(body, "application/gzip", f"{job_id}-labels.nii.gz", headers)


def _dicom_seg(loaded: Loaded, job_id: str) -> Rendered:
    medical = loaded.medical
    if medical is None or medical.source_kind != "dicom" or not medical.source_header:
        raise Conflict("dicom-seg output exists for DICOM inputs; use png, npz or rle", code="format_not_available")
    header = medical.source_header
    if loaded.volume is not None:
        stack = loaded.volume.masks  # (N, F, R, C): the frames are the slices
    else:
        assert loaded.image_masks is not None
        stack = _frames_of(header, loaded.image_masks, loaded.job.options or {})
    prompts = [s.prompt for s in loaded.summaries]
    provenance = loaded.provenance
    try:
        body = dicom_seg_bytes(
            header, stack, prompts, job_id=job_id, model=str(provenance.get("model", "medimageparse")),
            provenance=provenance,
        )
    except SegUnavailable as exc:
        raise Conflict(f"a DICOM SEG cannot be made for this source: {exc}", code="format_not_available") from None
    return Rendered(body, "application/dicom", f"{job_id}-seg.dcm", {})


def _frames_of(header: bytes, image_masks: np.ndarray, options: dict[str, Any]) -> np.ndarray:
    """A 2-D job on frame f of a multi-frame source: its masks placed on frame f, the others empty."""
    frames = int(dicom.read_header_bytes(header).get("NumberOfFrames") or 1)
    if frames == 1:
        return image_masks
    stack = np.zeros((image_masks.shape[0], frames, *image_masks.shape[1:]), np.uint8)
    stack[:, int(options.get("frame") or 0)] = image_masks
    return stack
