"""The MedImageParse 2D wire format: parse a scoring request, score it, build the response body.

Request: ``{"input_data": {"columns": ["image", "text"], "index": [0, ...], "data": [[<b64 PNG>, "a & b"]]}}``
(other top-level keys such as ``params`` are ignored, as the real endpoint does). Response: a JSON array
with one ``{"image_features": <JSON string>, "text_features": [...]}`` per row, in row order.

Anything wrong with the envelope or a row is a *model* error: the caller answers 424 with inner status 400.
"""

from __future__ import annotations

import binascii
import struct
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import orjson
import pybase64

from emulator.categories import category_for_prompt
from emulator.segment import segment_image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
MODEL_SIDE = 1024
#: PNG colour types the model's reader accepts: gray, RGB, palette, gray+alpha, RGBA (alpha is ignored).
_PNG_COLOUR_TYPES = frozenset({0, 2, 3, 4, 6})
#: Refuse to decode more pixels than this; far above any sensible request, it guards the emulator's memory.
MAX_IMAGE_PIXELS = 64 * 1024 * 1024


class ModelInputError(Exception):
    """The model rejected the input; the endpoint reports it as 424 with inner status 400."""


@dataclass(frozen=True)
class ScoringLimits:
    """The config values that shape parsing, copied so a worker thread never reads a changing config."""

    size_mode: str
    allow_jpeg: bool
    max_rows: int


@dataclass(frozen=True)
class Row:
    gray: np.ndarray
    prompts: list[str]


@dataclass(frozen=True)
class ScoredRequest:
    rows: int
    prompts: int
    body: bytes


def score_body(body: bytes, limits: ScoringLimits) -> ScoredRequest:
    """Parse, segment and encode a whole request (CPU-bound: run it off the event loop)."""
    rows = parse_request(body, limits)
    return ScoredRequest(
        rows=len(rows),
        prompts=sum(len(row.prompts) for row in rows),
        body=orjson.dumps([row_result(row) for row in rows]),
    )


def parse_envelope(body: bytes, max_rows: int) -> tuple[int, int, list[list[Any]]]:
    """The body's ``input_data`` envelope: (image column, text column, rows), checked (2-D and 3-D).

    Raises:
        ModelInputError: the body is not JSON, or the envelope is malformed.
    """
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ModelInputError("request body is not valid JSON") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("input_data"), dict):
        raise ModelInputError("request body must be a JSON object with an 'input_data' object")
    return _check_envelope(payload["input_data"], max_rows)


def parse_request(body: bytes, limits: ScoringLimits) -> list[Row]:
    """Rows of a scoring request, validated strictly.

    Raises:
        ModelInputError: the body, envelope or a row is malformed; the message says which and why.
    """
    image_column, text_column, data = parse_envelope(body, limits.max_rows)
    rows = []
    for number, row in enumerate(data):
        image, text = row[image_column], row[text_column]
        if not isinstance(image, str) or not isinstance(text, str):
            raise ModelInputError(f"row {number}: image and text must be strings")
        try:
            rows.append(Row(gray=_decode_image(image, limits), prompts=split_prompts(text)))
        except ModelInputError as exc:
            raise ModelInputError(f"row {number}: {exc}") from None
    return rows


def _check_envelope(input_data: dict[str, Any], max_rows: int) -> tuple[int, int, list[list[Any]]]:
    columns = input_data.get("columns")
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise ModelInputError("input_data.columns must be a list of column names")
    if "image" not in columns or "text" not in columns or len(set(columns)) != len(columns):
        raise ModelInputError("input_data.columns must name 'image' and 'text' exactly once")
    data = input_data.get("data")
    if not isinstance(data, list) or not data:
        raise ModelInputError("input_data.data must be a non-empty list of rows")
    if len(data) > max_rows:
        raise ModelInputError(f"too many rows: {len(data)} > {max_rows}")
    if not all(isinstance(row, list) and len(row) == len(columns) for row in data):
        raise ModelInputError(f"every row of input_data.data must be a list of {len(columns)} values")
    index = input_data.get("index")
    if index is not None and (
        not isinstance(index, list)
        or len(index) != len(data)
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in index)
    ):
        raise ModelInputError("input_data.index must be a list of integers, one per row")
    return columns.index("image"), columns.index("text"), data


def split_prompts(text: str) -> list[str]:
    """Prompts of one row: split on '&' and trimmed; an empty prompt is refused, never dropped."""
    prompts = [part.strip() for part in text.split("&")]
    if not all(prompts):
        raise ModelInputError("text has an empty prompt (check the '&' separators)")
    return prompts


def _b64decode(text: str) -> bytes:
    # Fast strict path first; samples send base64.encodebytes output, whose newlines need removing.
    for candidate in (text, "".join(text.split())):
        try:
            return pybase64.b64decode(candidate, validate=True)
        except (binascii.Error, ValueError):
            continue
    raise ModelInputError("image is not valid base64")


def _decode_image(encoded: str, limits: ScoringLimits) -> np.ndarray:
    raw = _b64decode(encoded)
    if raw.startswith(PNG_MAGIC):
        _check_png_header(raw)
    elif not (limits.allow_jpeg and raw.startswith(JPEG_MAGIC)):
        raise ModelInputError("image must be a PNG" + (" or JPEG" if limits.allow_jpeg else ""))
    flags = cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION
    gray = cv2.imdecode(np.frombuffer(raw, np.uint8), flags)
    if gray is None:
        raise ModelInputError("image could not be decoded")
    if limits.size_mode == "strict" and gray.shape != (MODEL_SIDE, MODEL_SIDE):
        raise ModelInputError(f"image must be {MODEL_SIDE}x{MODEL_SIDE}, got {gray.shape[1]}x{gray.shape[0]}")
    return gray


def _check_png_header(raw: bytes) -> None:
    if len(raw) < 26 or raw[12:16] != b"IHDR":
        raise ModelInputError("image is a truncated PNG")
    width, height = struct.unpack(">II", raw[16:24])
    bit_depth, colour_type = raw[24], raw[25]
    if colour_type not in _PNG_COLOUR_TYPES:
        raise ModelInputError(f"unsupported PNG colour type {colour_type}")
    if bit_depth > 8:
        raise ModelInputError(f"{bit_depth}-bit PNG is not supported; send 8-bit gray or RGB")
    if width * height > MAX_IMAGE_PIXELS or width == 0 or height == 0:
        raise ModelInputError(f"image size {width}x{height} is out of range")


def row_result(row: Row) -> dict[str, Any]:
    """Response item of one row: its masks as the ``image_features`` JSON string, plus categories."""
    masks = segment_image(row.gray, row.prompts)
    count, height, width = masks.shape
    data = pybase64.b64encode_as_string(masks.data)
    # Byte-for-byte what json.dumps({"data": ..., "shape": [...], "dtype": "uint8"}) gives, without
    # a second scan of the multi-megabyte base64 string (base64 needs no JSON escaping).
    image_features = f'{{"data": "{data}", "shape": [{count}, {height}, {width}], "dtype": "uint8"}}'
    return {"image_features": image_features, "text_features": [category_for_prompt(p) for p in row.prompts]}
