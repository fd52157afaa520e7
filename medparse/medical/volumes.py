"""A volume's masks: kept slice by slice while a job runs, stored compactly, read back in input order.

Storage (``VOLUME_ENCODING``): the masks of all N prompts as one uint8 array (N, S, H, ceil(W/8)),
S slices along the job's slice axis, each slice row packed with ``np.packbits(axis=-1)`` (most
significant bit first, the row's last byte zero-padded), then zlib level 1. Slices that were not
segmented are all zero. ``np.moveaxis(masks, 1, 1 + slice_axis)`` puts a prompt's (S, H, W) back
into the input array's order. Like 2-D masks (``medparse.masks``), zlib level 1 over packed bits:
a few KB per prompt for organ-like masks, never more than 1/8 byte per voxel plus zlib's framing.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

VOLUME_ENCODING = "packbits-rows-zlib1"
#: ``job_masks.encoding`` of a volume job's per-prompt summary rows (their ``data`` is empty).
VOLUME_SUMMARY_ENCODING = "volume"


@dataclass(frozen=True)
class VolumeMasks:
    """All prompts' masks of one volume, slice-major: (N, S, H, W) uint8 of 0/1."""

    masks: np.ndarray
    slice_axis: int

    @property
    def shape(self) -> tuple[int, ...]:
        """The input's spatial shape."""
        _, s, h, w = self.masks.shape
        dims = [h, w]
        dims.insert(self.slice_axis, s)
        return tuple(dims)

    def in_input_order(self, index: int | None = None) -> np.ndarray:
        """(N, *shape) or, for one prompt, (*shape): the masks laid out as the input volume."""
        if index is None:
            return np.moveaxis(self.masks, 1, 1 + self.slice_axis)
        return np.moveaxis(self.masks[index], 0, self.slice_axis)

    def label_volume(self) -> np.ndarray:
        """uint8 labels in input order: k + 1 where prompt k's mask is set, a later prompt winning overlaps."""
        labels = np.zeros(self.masks.shape[1:], np.uint8)
        for k in range(self.masks.shape[0]):
            labels[self.masks[k] != 0] = k + 1
        return np.moveaxis(labels, 0, self.slice_axis)


def encode(masks: np.ndarray) -> bytes:
    """``VOLUME_ENCODING`` of (N, S, H, W) masks (non-zero = foreground)."""
    if masks.ndim != 4:
        raise ValueError(f"expected (N, S, H, W) masks, got {masks.shape}")
    return zlib.compress(np.packbits(masks != 0, axis=-1).tobytes(), 1)


def encode_packed(packed: np.ndarray) -> bytes:
    """``VOLUME_ENCODING`` of masks already packed row-wise: (N, S, H, ceil(W/8)) uint8."""
    return zlib.compress(np.ascontiguousarray(packed).tobytes(), 1)


def decode(data: bytes, n: int, slices: int, height: int, width: int, slice_axis: int) -> VolumeMasks:
    """Inverse of ``encode``; ValueError if the blob and the sizes disagree."""
    row_bytes = (width + 7) // 8
    expected = n * slices * height * row_bytes
    inflater = zlib.decompressobj()
    try:
        packed = inflater.decompress(data, expected + 1)  # bounded: a mismatched blob cannot balloon
    except zlib.error as exc:
        raise ValueError(f"volume mask data is not {VOLUME_ENCODING}: {exc}") from None
    if len(packed) != expected or not inflater.eof:
        raise ValueError(f"volume mask data does not hold {n}x{slices}x{height}x{width} masks")
    bits = np.unpackbits(np.frombuffer(packed, np.uint8).reshape(n, slices, height, row_bytes), axis=-1, count=width)
    return VolumeMasks(bits, slice_axis)


def summary(mask: np.ndarray, slice_axis: int) -> tuple[int, list[int] | None]:
    """Voxel count and bbox of one prompt's (S, H, W) mask, the bbox in INPUT axis order.

    ``[i0, j0, k0, i1, j1, k1]`` with the ends exclusive (as 2-D bboxes), or None when empty.
    """
    count = int(np.count_nonzero(mask))
    if count == 0:
        return 0, None
    volume = np.moveaxis(mask, 0, slice_axis)
    starts, ends = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(volume.any(axis=other))
        starts.append(int(present[0]))
        ends.append(int(present[-1]) + 1)
    return count, starts + ends
