"""COCO run-length encoding (pycocotools' compressed ``counts`` string), one per mask or slice.

pycocotools wants a Fortran-ordered uint8 array; ``cv2.transpose(m).T`` makes that copy 10x faster
than ``np.asfortranarray`` (performance notes section 4).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from pycocotools import mask as coco


def encode(mask01: np.ndarray) -> dict[str, Any]:
    """``{"size": [h, w], "counts": "<compressed RLE>"}`` of a 2-D mask (non-zero = foreground)."""
    m = np.ascontiguousarray(np.not_equal(mask01, 0).view(np.uint8))
    fortran = cv2.transpose(m).T if m.shape[0] > 1 and m.shape[1] > 1 else np.asfortranarray(m)
    rle = coco.encode(fortran)
    counts = rle["counts"]
    text = counts.decode("ascii") if isinstance(counts, bytes) else str(counts)
    return {"size": [int(s) for s in rle["size"]], "counts": text}


def decode(rle: dict[str, Any]) -> np.ndarray:
    """Inverse of ``encode``: (h, w) uint8 of 0/1."""
    counts = rle["counts"]
    return np.ascontiguousarray(coco.decode({"size": rle["size"], "counts": counts.encode("ascii")}))


def coco_bbox(rle: dict[str, Any]) -> list[float]:
    """COCO ``[x, y, width, height]`` straight from the RLE."""
    box = coco.toBbox({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
    return [float(v) for v in box]


def image_document(masks01: np.ndarray, entries: list[dict[str, Any]], provenance: dict[str, Any]) -> dict[str, Any]:
    """The ``format=rle`` body of a 2-D result: one COCO RLE per prompt, in prompt order."""
    height, width = (int(masks01.shape[1]), int(masks01.shape[2])) if masks01.ndim == 3 else (0, 0)
    out = []
    for entry, mask in zip(entries, masks01, strict=True):
        rle = encode(mask)
        out.append({**entry, "area": int(np.count_nonzero(mask)), "bbox_xywh": coco_bbox(rle), "segmentation": rle})
    return {"format": "coco-rle", "width": width, "height": height, "masks": out, "provenance": provenance}


def volume_document(
    masks01: np.ndarray, slice_axis: int, shape: list[int], entries: list[dict[str, Any]], provenance: dict[str, Any]
) -> dict[str, Any]:
    """The ``format=rle`` body of a volume: per prompt, one RLE per non-empty slice along ``slice_axis``.

    ``masks01`` is slice-major (N, S, H, W): slice k of the input is ``volume`` indexed k on ``slice_axis``.
    """
    out = []
    for entry, mask in zip(entries, masks01, strict=True):
        present = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
        slices = [{"slice": int(k), "segmentation": encode(mask[k])} for k in present]
        out.append({**entry, "voxels": int(np.count_nonzero(mask)), "slices": slices})
    return {
        "format": "coco-rle-slices", "shape": shape, "slice_axis": slice_axis, "masks": out, "provenance": provenance,
    }
