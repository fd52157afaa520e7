"""The MedImageParse 3D wire format (protocol notes section 3): a NIfTI in, a label volume out.

The request is the 2-D envelope with one row whose ``image`` is the base64 of a ``.nii.gz``, so
``protocol.build_request_body`` builds it unchanged. The answer is parsed here, as untrusted input:
- documented: ``[{"nifti_file": "{\\"data\\": \\"<b64 .nii.gz>\\"}"}]``, an integer label map with
  the input's shape, label k = the k-th prompt (1-based; unconfirmed, so labels above N are refused);
- the unmerged samples' variant (S10): ``image_features`` with an (N, *shape) uint8 stack.
Either way the caller (workers/volume_pipeline.py) checks the shape against the input volume.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from medparse.endpoint.errors import EndpointBadResponse
from medparse.endpoint.protocol import (
    RowResult,
    ScoreRow,
    _as_object,
    _b64decode,
    _checked_dtype,
    decode_text_features,
)
from medparse.imaging import ImageRejected
from medparse.medical import nifti


def parse_3d_response(body: bytes, rows: Sequence[ScoreRow], *, max_voxels: int) -> list[RowResult]:
    """One ``RowResult`` per row: ``masks`` is an integer label map (*shape) or a (N, *shape) stack.

    Raises:
        EndpointBadResponse: anything that is not a volume answer for the prompts sent.
    """
    try:
        items = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EndpointBadResponse(f"response is not JSON ({exc}); first bytes: {body[:80]!r}") from None
    if not isinstance(items, list) or len(items) != len(rows):
        raise EndpointBadResponse(f"response is not a list of {len(rows)} row(s)")
    return [_parse_row(i, item, len(rows[i].prompts), max_voxels) for i, item in enumerate(items)]


def _parse_row(index: int, item: Any, n_prompts: int, max_voxels: int) -> RowResult:
    where = f"row {index}"
    if not isinstance(item, dict):
        raise EndpointBadResponse(f"{where} is a {type(item).__name__}, expected an object")
    if "nifti_file" in item:
        label_map = _label_volume(item["nifti_file"], n_prompts, max_voxels, where)
        return RowResult(masks=label_map, labels=[""] * n_prompts)
    if "image_features" in item:
        stack = _feature_stack(item["image_features"], n_prompts, max_voxels, where)
        raw_labels = item.get("text_features")
        labels = decode_text_features(raw_labels, n_prompts, where=where) if raw_labels is not None else None
        return RowResult(masks=stack, labels=labels or [""] * n_prompts)
    raise EndpointBadResponse(f"{where} has neither nifti_file nor image_features (keys: {sorted(item)[:5]})")


def _label_volume(raw: Any, n_prompts: int, max_voxels: int, where: str) -> np.ndarray:
    meta = _as_object(raw, f"{where} nifti_file")
    data = meta.get("data") if isinstance(meta, dict) else None
    blob = _b64decode(data, f"{where} nifti_file")
    try:
        header = nifti.parse_header(blob, max_voxels=max_voxels, max_bytes=max_voxels * 8 + 1024 * 1024)
        values, _ = nifti.load(blob, header, frame=None)
    except ImageRejected as exc:
        raise EndpointBadResponse(f"{where} nifti_file is not a usable NIfTI: {exc.message}") from None
    if values.dtype.kind == "f":
        if not np.isfinite(values).all() or not np.array_equal(values, np.round(values)):
            raise EndpointBadResponse(f"{where} label volume has non-integer values")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if low < 0 or high > n_prompts:
        raise EndpointBadResponse(f"{where} labels span {low:g}..{high:g}; expected 0..{n_prompts}")
    return values.astype(np.uint8)


def _feature_stack(raw: Any, n_prompts: int, max_voxels: int, where: str) -> np.ndarray:
    meta = _as_object(raw, f"{where} image_features")
    if not isinstance(meta, dict):
        raise EndpointBadResponse(f"{where} image_features is not an object")
    shape = meta.get("shape")
    if (
        not isinstance(shape, list) or len(shape) != 4
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise EndpointBadResponse(f"{where} image_features shape {shape!r} is not [N, X, Y, Z]")
    if shape[0] != n_prompts or math.prod(shape[1:]) > max_voxels:
        raise EndpointBadResponse(f"{where} image_features shape {shape} does not fit {n_prompts} prompts")
    dtype = _checked_dtype(meta.get("dtype"), where)
    data = _b64decode(meta.get("data"), where)
    if len(data) != math.prod(shape) * dtype.itemsize:
        raise EndpointBadResponse(f"{where} image_features has {len(data)} bytes for shape {shape}")
    stack = np.frombuffer(data, dtype).reshape(shape)
    return stack.astype(np.uint8) * np.uint8(255) if dtype == np.bool_ else stack.copy()
