"""The MedImageParse 3D deployment (protocol notes sections 3 and 8): a NIfTI volume in, a label volume out.

Request: the 2-D envelope with exactly one row ``[<b64 .nii or .nii.gz>, "a & b"]`` (``index`` is ignored,
as the docs say; more rows are refused). Response: ``[{"nifti_file": "{\\"data\\": \\"<b64 .nii.gz>\\"}"}]``
whose volume is a uint8 label map of the input's shape and affine, label k for the k-th prompt (later
prompts win overlaps). ``output_3d = "image_features"`` answers the unmerged samples' variant instead:
``image_features`` (N, *shape) uint8 probabilities and ``text_features``.

Like the 2-D route this is NOT the model: every slice along the last axis goes through the same
classical segmentation (``segment.segment_image``) after a 0.5/99.5 percentile normalisation.
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import orjson
import pybase64

from emulator.categories import category_for_prompt
from emulator.protocol import ModelInputError, ScoredRequest, _b64decode, parse_envelope, split_prompts
from emulator.segment import segment_image

#: Voxels of a volume the emulator segments; guards its memory, far above the test volumes.
MAX_VOXELS = 64 * 1024 * 1024
_MAX_FILE_BYTES = MAX_VOXELS * 8 + 1024 * 1024


@dataclass(frozen=True)
class Scoring3DLimits:
    output_3d: str


def score3d_body(body: bytes, limits: Scoring3DLimits) -> ScoredRequest:
    """Parse, segment and encode a 3-D request (CPU-bound: run it off the event loop)."""
    image_column, text_column, data = parse_envelope(body, max_rows=1)
    image, text = data[0][image_column], data[0][text_column]
    if not isinstance(image, str) or not isinstance(text, str):
        raise ModelInputError("row 0: image and text must be strings")
    prompts = split_prompts(text)
    volume, source = _read_nifti(_b64decode(image))
    labels, probabilities = segment_volume(volume, prompts)
    if limits.output_3d == "image_features":
        features = json.dumps({
            "data": pybase64.b64encode_as_string(probabilities.tobytes()),
            "shape": list(probabilities.shape), "dtype": "uint8",
        })
        item = {"image_features": features, "text_features": [category_for_prompt(p) for p in prompts]}
    else:
        out = nib.Nifti1Image(labels, source.affine)
        out.header.set_data_dtype(np.uint8)
        blob = gzip.compress(out.to_bytes(), compresslevel=1, mtime=0)
        item = {"nifti_file": json.dumps({"data": pybase64.b64encode_as_string(blob)})}
    return ScoredRequest(rows=1, prompts=len(prompts), body=orjson.dumps([item]))


def _read_nifti(raw: bytes) -> tuple[np.ndarray, nib.Nifti1Image | nib.Nifti2Image]:
    if raw.startswith(b"\x1f\x8b"):
        inflater = zlib.decompressobj(wbits=47)
        try:
            raw = inflater.decompress(raw, _MAX_FILE_BYTES)
        except zlib.error as exc:
            raise ModelInputError("image is not a valid .nii.gz") from exc
    sizes = {int.from_bytes(raw[:4], order) for order in ("little", "big")} if len(raw) >= 4 else set()
    klass: type[nib.Nifti1Image] | type[nib.Nifti2Image] = nib.Nifti1Image if 348 in sizes else nib.Nifti2Image
    if not sizes & {348, 540}:
        raise ModelInputError("image must be a NIfTI volume (.nii or .nii.gz)")
    try:
        image = klass.from_bytes(raw)
        shape = tuple(int(d) for d in image.shape)
        if len(shape) != 3 or min(shape) < 1 or int(np.prod(shape)) > MAX_VOXELS:
            raise ModelInputError(f"the volume must be 3-D with at most {MAX_VOXELS} voxels, got {list(shape)}")
        volume = np.asarray(image.dataobj, dtype=np.float32)
    except ModelInputError:
        raise
    except Exception as exc:  # nibabel raises many types on damaged files
        raise ModelInputError(f"the NIfTI volume could not be read: {type(exc).__name__}") from exc
    return volume, image


def segment_volume(volume: np.ndarray, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(label map uint8 of the volume's shape, (N, *shape) uint8 probabilities), slice by slice on axis 2."""
    finite = volume[np.isfinite(volume)]
    lo, hi = (np.percentile(finite, (0.5, 99.5)) if finite.size else (0.0, 0.0))
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    gray = ((np.clip(np.nan_to_num(volume, nan=lo), lo, hi) - lo) * scale).astype(np.uint8)
    probabilities = np.zeros((len(prompts), *volume.shape), np.uint8)
    for k in range(volume.shape[2]):
        probabilities[:, :, :, k] = segment_image(np.ascontiguousarray(gray[:, :, k]), prompts)
    labels = np.zeros(volume.shape, np.uint8)
    for index in range(len(prompts)):
        labels[probabilities[index] >= 128] = index + 1
    return labels, probabilities
