"""Masks from the model's square back to the upload's pixels, and how we store and serve them.

The model returns one uint8 map per prompt, 0..255 = probability x 255, in the padded square
we sent it. Foreground is ``>= 128``, the model card's 0.5 threshold.
"""

from __future__ import annotations

import zlib

import cv2
import numpy as np

from medparse.imaging import Geometry
from medparse.outputs import archive

#: Stored masks: np.packbits (row-major, most significant bit first, last byte zero-padded), then
#: zlib level 1. 1.8-3 KB for a realistic 1024x1024 mask, never more than packbits + ~50 bytes.
MASK_ENCODING = "packbits-zlib1"

#: Probability (0..255) from which a pixel is foreground: the model's 0.5 threshold.
THRESHOLD = 128


def masks_to_original(probabilities: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Model output (N, S, S) uint8 probabilities -> (N, orig_h, orig_w) uint8 masks of 0/1.

    S is normally ``geometry.target``; another square size is read as the same square at a
    different resolution. An already cropped (N, resized_h, resized_w) stack is accepted too.
    Each probability map is resized with linear interpolation and then thresholded, which keeps
    boundaries smooth where thresholding first would give staircases when enlarging.
    """
    probs = np.asarray(probabilities)
    if probs.ndim != 3 or probs.dtype != np.uint8:
        raise ValueError(f"expected (N, S, S) uint8 probabilities, got {probs.dtype} {probs.shape}")
    n, rows, cols = probs.shape
    height, width = geometry.orig_h, geometry.orig_w
    out = np.empty((n, height, width), np.uint8)
    if (rows, cols) == (geometry.target, geometry.target):
        crop = probs[:, geometry.pad_top:geometry.pad_top + geometry.resized_h,
                     geometry.pad_left:geometry.pad_left + geometry.resized_w]
        for i in range(n):
            _resize_into(crop[i], out[i])
    elif rows == cols:
        matrix = _square_to_original(geometry, rows)
        for i in range(n):
            cv2.warpAffine(
                probs[i], matrix, (width, height), dst=out[i],
                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE,
            )
    elif (rows, cols) == (geometry.resized_h, geometry.resized_w):
        for i in range(n):
            _resize_into(probs[i], out[i])
    else:
        resized = f"{geometry.resized_h}x{geometry.resized_w}"
        raise ValueError(f"masks of {rows}x{cols} fit neither a square nor the resized {resized}")
    for i in range(n):
        cv2.threshold(out[i], THRESHOLD - 1, 1, cv2.THRESH_BINARY, dst=out[i])  # > 127 is >= 128
    return out


def _resize_into(src: np.ndarray, dst: np.ndarray) -> None:
    if src.shape == dst.shape:
        dst[...] = src
    else:
        cv2.resize(src, (dst.shape[1], dst.shape[0]), dst=dst, interpolation=cv2.INTER_LINEAR)


def _square_to_original(geometry: Geometry, size: int) -> np.ndarray:
    """Affine map from original pixel (x, y) to the S x S square, pixel centres aligned."""
    zoom = size / geometry.target
    sx = geometry.resized_w / geometry.orig_w * zoom
    sy = geometry.resized_h / geometry.orig_h * zoom
    tx = (geometry.pad_left + 0.5 * geometry.resized_w / geometry.orig_w) * zoom - 0.5
    ty = (geometry.pad_top + 0.5 * geometry.resized_h / geometry.orig_h) * zoom - 0.5
    return np.array([[sx, 0.0, tx], [0.0, sy, ty]], np.float64)


def area_and_bbox(mask: np.ndarray) -> tuple[int, list[int] | None]:
    """Foreground pixel count and bbox ``[x0, y0, x1, y1]``; x1 and y1 are EXCLUSIVE.

    So width = x1 - x0 and ``mask[y0:y1, x0:x1]`` is the tight crop. None when the mask is empty.
    Any non-zero value counts as foreground.
    """
    m = _as_u8_2d(mask)
    if m.size == 0:
        return 0, None
    area = int(cv2.countNonZero(m))
    if area == 0:
        return 0, None
    x, y, w, h = cv2.boundingRect(m)
    return area, [x, y, x + w, y + h]


def encode_mask(mask: np.ndarray) -> bytes:
    """``MASK_ENCODING`` of a 2-D mask (non-zero = foreground). The shape is stored by the caller."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {m.shape}")
    return zlib.compress(np.packbits(m, axis=None).tobytes(), 1)  # packbits maps any non-zero to 1


def decode_mask(data: bytes, height: int, width: int) -> np.ndarray:
    """Inverse of ``encode_mask``: (height, width) uint8 of 0/1. ValueError if data and size disagree."""
    if height < 0 or width < 0:
        raise ValueError(f"negative mask size {height}x{width}")
    count = height * width
    expected = (count + 7) // 8
    inflater = zlib.decompressobj()
    try:
        # max_length bounds what a hostile or mismatched blob can make us allocate
        packed = inflater.decompress(data, expected + 1)
    except zlib.error as exc:
        raise ValueError(f"mask data is not {MASK_ENCODING}: {exc}") from None
    if len(packed) != expected or not inflater.eof or inflater.unused_data:
        raise ValueError(f"mask data does not hold a {height}x{width} mask")
    bits = np.unpackbits(np.frombuffer(packed, np.uint8), count=count)
    return bits.reshape(height, width)


def mask_png(mask01: np.ndarray) -> bytes:
    """One mask as an 8-bit grayscale PNG, background 0 and foreground 255, zlib level 1."""
    m = _as_u8_2d(mask01)
    _, scaled = cv2.threshold(m, 0, 255, cv2.THRESH_BINARY)
    ok, buf = cv2.imencode(".png", scaled, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("OpenCV failed to encode the PNG")
    return buf.tobytes()


def masks_npz(masks01: np.ndarray) -> bytes:
    """All masks as an .npz holding one array ``masks``: uint8 (N, H, W), values 0/1.

    Read it with ``np.load(io.BytesIO(blob))["masks"]``. The container is exactly what
    ``np.savez_compressed`` writes (a zip of ``masks.npy``, DEFLATE), but at zlib level 1
    instead of zipfile's default 6: 3-10x faster for large masks, a little larger.
    """
    m = np.asarray(masks01)
    if m.ndim != 3:
        raise ValueError(f"expected (N, H, W) masks, got shape {m.shape}")
    return archive.npz_bytes({"masks": np.not_equal(m, 0).view(np.uint8)})


def _as_u8_2d(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {m.shape}")
    if m.dtype != np.uint8:
        m = np.not_equal(m, 0).view(np.uint8)
    return np.ascontiguousarray(m)
