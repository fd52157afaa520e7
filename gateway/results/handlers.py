"""``GET /v1/jobs/{job_id}/result?format=png|npz|rle|overlay|nifti|dicom-seg[&mask=i][&slice=k]``.

One route for every output format of a succeeded job. ``mask`` picks one prompt's mask (default:
all, or the first for ``png``); ``slice`` picks a volume's slice for ``png``/``overlay`` (default: the
slice where the mask, or all masks, cover the most voxels). Every answer carries the job's
provenance: in the body where the format has room (RLE JSON, NPZ member, PNG text chunk, NIfTI
extension, SEG algorithm attributes) and as a compact ``Medparse-Provenance`` header.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import orjson
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from db import jobs as repo
from db import medical as medical_repo
from db.status import JobStatus
from gateway.http.auth import principal
from gateway.http.params import bounded_int, job_id_from
from gateway.http.problems import ApiProblem, field_error
from gateway.http.tenancy import job_row, tenant_transaction
from gateway.jobs import services
from gateway.jobs.schemas import INT32_MAX
from gateway.keys import DECODE_POOL, ENGINE, SETTINGS
from medparse import imaging, masks
from medparse.decode_pool import DecodeBusy, DecodeLimitExceeded
from medparse.job_links import is_volume
from medparse.medical import dicom, geometry, inputs, nifti, volumes
from medparse.medical.errors import OptionRejected
from medparse.medical.formats import sniff_medical
from medparse.outputs import archive, overlay, rle
from medparse.outputs.dicom_seg import SegUnavailable, dicom_seg_bytes
from medparse.settings import Settings

FORMATS = ("png", "npz", "rle", "overlay", "nifti", "dicom-seg")
_PROVENANCE_HEADER_KEYS = ("model", "deployment", "endpoint_client_request_id", "software_version")


@dataclass(frozen=True)
class Loaded:
    row: dict[str, Any]
    summaries: list[dict[str, Any]]
    #: a 2-D job's stored mask rows, or None for a volume (whose masks are in ``medical``)
    mask_rows: list[Any] | None
    medical: dict[str, Any] | None
    #: the upload, when the format needs it (None also when retention deleted it)
    image: bytes | None

    # Decoded on first use, by ``render`` in its thread: CPU work stays off the event loop.
    @cached_property
    def image_masks(self) -> np.ndarray | None:
        """The decoded 2-D masks (N, H, W), or None for a volume."""
        return None if self.mask_rows is None else np.stack(services.decode_masks(self.mask_rows))

    @cached_property
    def volume(self) -> volumes.VolumeMasks | None:
        if self.mask_rows is not None or self.medical is None:
            return None
        return _decode_volume(self.medical, len(self.summaries))

    @property
    def stored_bytes(self) -> int:
        """Compressed bytes a rendering decodes (the decode pool's in-flight bytes)."""
        masks_bytes = sum(len(m["data"] or b"") for m in self.mask_rows or ())
        volume_bytes = len((self.medical or {}).get("data") or b"")
        return masks_bytes + volume_bytes + len(self.image or b"")

    @property
    def provenance(self) -> dict[str, Any]:
        return dict(self.row.get("result_meta") or {})


@dataclass(frozen=True)
class Rendered:
    body: bytes
    content_type: str
    filename: str
    headers: dict[str, str]


async def get_result(request: web.Request) -> web.Response:
    who = principal(request, "jobs:read")
    job_id = job_id_from(request)
    fmt = request.query.get("format", "")
    if fmt not in FORMATS:
        raise field_error("format", f"one of {', '.join(FORMATS)}", status=400)
    mask, slice_ = _int_param(request, "mask"), _int_param(request, "slice")
    if slice_ is not None and fmt not in ("png", "overlay"):
        raise field_error("slice", "applies to format=png and format=overlay only", status=400)
    settings = request.app[SETTINGS]
    loaded = await load_result(request.app[ENGINE], who.tenant_id, job_id, need_input=fmt == "overlay")
    if slice_ is not None and not is_volume(loaded.row):  # never ignored: the caller meant something
        raise field_error("slice", "applies to volume results only; this job's result is 2-D", status=400)
    # Every format decodes whole masks (a volume's are up to max_volume_voxels per prompt) and the overlay
    # decodes the untrusted input again: in a decode process, within its memory and time budget.
    try:
        rendered = await request.app[DECODE_POOL].run(
            render, loaded, fmt, mask, slice_, settings, nbytes=loaded.stored_bytes, party=who.tenant_id
        )
    except DecodeBusy as exc:
        raise services.decode_busy_problem(exc) from None
    except DecodeLimitExceeded as exc:
        raise ApiProblem(422, exc.code, f"result: {exc.message}") from None
    except (imaging.ImageRejected, OptionRejected) as exc:  # the input no longer reads under today's limits
        message = exc.message if isinstance(exc, imaging.ImageRejected) else f"{exc.field}: {exc.message}"
        raise ApiProblem(409, "result_unavailable", f"result: the job's input cannot be read now: {message}") from None
    headers = {
        "Content-Disposition": f'attachment; filename="{rendered.filename}"',
        "Medparse-Provenance": _provenance_header(loaded.provenance),
        **rendered.headers,
    }
    return web.Response(body=rendered.body, content_type=rendered.content_type, headers=headers)


def _int_param(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    return bounded_int(raw, name, 0, INT32_MAX)


def _provenance_header(provenance: dict[str, Any]) -> str:
    compact = {k: provenance.get(k) for k in _PROVENANCE_HEADER_KEYS if provenance.get(k) is not None}
    return orjson.dumps(compact).decode("ascii", "replace")


async def load_result(engine: AsyncEngine, tenant_id: uuid.UUID, job_id: uuid.UUID, *, need_input: bool) -> Loaded:
    async with tenant_transaction(engine, tenant_id) as conn:
        row = await job_row(conn, tenant_id, job_id)
        if row["status"] != JobStatus.succeeded.value:
            raise ApiProblem(409, "job_not_succeeded", f"the job is {row['status']}; results exist once it succeeded")
        summaries = [dict(m) for m in (await conn.execute(repo.SELECT_MASK_SUMMARIES, {"job_id": job_id})).mappings()]
        medical_row = (await conn.execute(medical_repo.select_medical(tenant_id, job_id))).mappings().first()
        mask_rows = None
        if not is_volume(row):
            # plain dicts: the rows travel to a decode process (pickled)
            mask_rows = [dict(m) for m in (await conn.execute(repo.select_mask_data(job_id))).mappings()]
        image = (await conn.execute(repo.select_input(job_id))).scalar_one_or_none() if need_input else None
    medical = dict(medical_row) if medical_row is not None else None
    if mask_rows is None and (medical is None or medical.get("data") is None):
        raise ApiProblem(409, "result_unavailable", "the job's volume masks are missing")
    return Loaded(dict(row), summaries, mask_rows, medical, image)


def _decode_volume(medical: dict[str, Any], count: int) -> volumes.VolumeMasks:
    shape, axis = list(medical["volume_shape"]), int(medical["slice_axis"])
    height, width = (d for i, d in enumerate(shape) if i != axis)
    return volumes.decode(medical["data"], count, shape[axis], height, width, axis)


def render(loaded: Loaded, fmt: str, mask: int | None, slice_: int | None, settings: Settings) -> Rendered:
    """The body of one format (CPU- and memory-bound: runs in a decode process, medparse/decode_pool.py)."""
    count = len(loaded.summaries)
    if mask is not None and mask >= count:
        raise ApiProblem(404, "mask_not_found", f"no mask {mask}; this job has {count}")
    job_id = str(loaded.row["id"])
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
            raise field_error("slice", f"this volume has {slices} slices along axis {volume.slice_axis}", status=400)
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
        if loaded.medical and loaded.medical.get("affine") is not None:
            arrays["affine"] = np.asarray(loaded.medical["affine"], np.float64)
    body = archive.npz_bytes(arrays, loaded.provenance)
    return Rendered(body, "application/octet-stream", f"{job_id}-masks.npz", {})


def _entries(loaded: Loaded, chosen: list[int]) -> list[dict[str, Any]]:
    return [
        {"index": loaded.summaries[i]["index"], "prompt": loaded.summaries[i]["prompt"],
         "label": loaded.summaries[i]["label"]}
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
        raise ApiProblem(410, "input_deleted", "the job's input was deleted (retention); the overlay needs it")
    chosen = _pick(loaded.summaries, mask)
    options = loaded.row.get("options") or {}
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
    legend = [(loaded.summaries[i]["prompt"], loaded.summaries[i]["label"]) for i in chosen]
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
    medical = loaded.medical or {}
    kind = medical.get("source_kind")
    dicom_volume = kind == "dicom" and bool(medical.get("source_header"))
    if loaded.volume is None or not (kind == "nifti" or dicom_volume):
        raise ApiProblem(
            409, "format_not_available", "nifti output exists for NIfTI inputs and DICOM volumes; use png, npz or rle"
        )
    if mask is None:
        labels = loaded.volume.label_volume()
    else:
        labels = loaded.volume.in_input_order(mask).astype(np.uint8)
    provenance = loaded.provenance
    description = f"medparse labels {provenance.get('model', '')} {provenance.get('software_version', '')}"
    header_blob, affine, xform_code, headers = medical.get("source_header"), medical.get("affine"), None, {}
    if dicom_volume:
        # A DICOM volume is (F, R, C); the label map is laid out (C, R, F): i = column, j = row, k = frame.
        found = geometry.frame_geometry(dicom.read_header_bytes(medical["source_header"]))
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
    medical = loaded.medical or {}
    if medical.get("source_kind") != "dicom" or not medical.get("source_header"):
        raise ApiProblem(409, "format_not_available", "dicom-seg output exists for DICOM inputs; use png, npz or rle")
    header = medical["source_header"]
    if loaded.volume is not None:
        stack = loaded.volume.masks  # (N, F, R, C): the frames are the slices
    else:
        assert loaded.image_masks is not None
        stack = _frames_of(header, loaded.image_masks, loaded.row.get("options") or {})
    prompts = [s["prompt"] for s in loaded.summaries]
    provenance = loaded.provenance
    try:
        body = dicom_seg_bytes(
            header, stack, prompts, job_id=job_id, model=str(provenance.get("model", "medimageparse")),
            provenance=provenance,
        )
    except SegUnavailable as exc:
        raise ApiProblem(409, "format_not_available", f"a DICOM SEG cannot be made for this source: {exc}") from None
    return Rendered(body, "application/dicom", f"{job_id}-seg.dcm", {})


def _frames_of(header: bytes, image_masks: np.ndarray, options: dict[str, Any]) -> np.ndarray:
    """A 2-D job on frame f of a multi-frame source: its masks placed on frame f, the others empty."""
    frames = int(dicom.read_header_bytes(header).get("NumberOfFrames") or 1)
    if frames == 1:
        return image_masks
    stack = np.zeros((image_masks.shape[0], frames, *image_masks.shape[1:]), np.uint8)
    stack[:, int(options.get("frame") or 0)] = image_masks
    return stack
