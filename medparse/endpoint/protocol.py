"""The MedImageParse 2D wire format: build the scoring request, parse and validate its answer.

Pure module (no HTTP). The response is untrusted input (OWASP API10): every field is checked
before a single mask byte is used, and any violation is an ``EndpointBadResponse``.
Base64 goes through pybase64 with ``validate=True`` (40-100x the stdlib); the outer and inner JSON
are parsed with the stdlib ``json``, which is as fast as orjson on one huge string.
"""

from __future__ import annotations

import ast
import binascii
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pybase64

from medparse.endpoint.errors import EndpointBadResponse, EndpointRejectedInput

PROMPT_SEPARATOR = "&"
#: Masks come back at the size of the image sent (1024 for us); anything larger is not a mask we asked for.
MAX_MASK_SIDE = 4096
_ACCEPTED_MASK_DTYPES = (np.dtype(np.uint8), np.dtype(np.bool_))
_WHITESPACE = str.maketrans("", "", " \t\r\n")


@dataclass(frozen=True)
class ScoreRow:
    image_png: bytes
    prompts: list[str]


@dataclass(frozen=True)
class RowResult:
    #: (N, H, W) uint8, 0..255 probability x 255 (foreground >= 128), one mask per prompt in order
    masks: np.ndarray
    #: the model's category of each mask, one per prompt
    labels: list[str]


@dataclass(frozen=True)
class ScoreResult:
    rows: list[RowResult]
    client_request_id: str
    server_request_id: str | None
    #: HTTP attempts made for this call
    attempts: int
    seconds: float


def split_prompts(text: str) -> list[str]:
    """The server's rule for the ``text`` column: one mask per ``&``-separated, stripped prompt."""
    return [p.strip() for p in text.split(PROMPT_SEPARATOR)]


def join_prompts(prompts: Sequence[str]) -> str:
    return f" {PROMPT_SEPARATOR} ".join(prompts)


def check_rows(rows: Sequence[ScoreRow]) -> None:
    """Refuse, before sending, rows the server would split into a different number of prompts.

    Raises:
        EndpointRejectedInput: no rows, a row without prompts, an empty prompt or one containing ``&``.
    """
    if not rows:
        raise EndpointRejectedInput("nothing to score: pass at least one row")
    for i, row in enumerate(rows):
        if not row.prompts:
            raise EndpointRejectedInput(f"row {i} has no prompts: give at least one")
        for j, prompt in enumerate(row.prompts):
            if PROMPT_SEPARATOR in prompt:
                raise EndpointRejectedInput(
                    f"prompt {j} of row {i} contains '&', which the model reads as a prompt separator; "
                    "remove it or send it as two prompts"
                )
            if not prompt.strip():
                raise EndpointRejectedInput(f"prompt {j} of row {i} is empty")
        if not row.image_png:
            raise EndpointRejectedInput(f"row {i} has no image bytes")


def build_request_body(rows: Sequence[ScoreRow]) -> bytes:
    """The JSON body of ``POST /score`` (pandas split orientation under ``input_data``)."""
    check_rows(rows)
    payload = {
        "input_data": {
            "columns": ["image", "text"],
            "index": list(range(len(rows))),
            "data": [[pybase64.b64encode_as_string(r.image_png), join_prompts(r.prompts)] for r in rows],
        }
    }
    return orjson.dumps(payload)


def parse_response(body: bytes, rows: Sequence[ScoreRow]) -> list[RowResult]:
    """Decode a 200 answer into one ``RowResult`` per row sent, in order.

    Raises:
        EndpointBadResponse: anything that does not match what was asked for.
    """
    try:
        items = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EndpointBadResponse(f"response is not JSON ({exc}); first bytes: {body[:80]!r}") from None
    if not isinstance(items, list):
        raise EndpointBadResponse(f"response is a JSON {type(items).__name__}, expected a list of rows")
    if len(items) != len(rows):
        raise EndpointBadResponse(f"response has {len(items)} rows for {len(rows)} sent")
    return [_parse_row(i, item, len(rows[i].prompts)) for i, item in enumerate(items)]


def _parse_row(index: int, item: Any, n_prompts: int) -> RowResult:
    where = f"row {index}"
    if not isinstance(item, dict):
        raise EndpointBadResponse(f"{where} is a {type(item).__name__}, expected an object")
    if "image_features" not in item:
        raise EndpointBadResponse(f"{where} has no image_features (keys: {sorted(item)[:5]})")
    masks = decode_image_features(item["image_features"], n_prompts, where=where)
    labels = decode_text_features(item.get("text_features"), n_prompts, where=where)
    return RowResult(masks=masks, labels=labels)


def decode_image_features(raw: Any, n_prompts: int, *, where: str = "row") -> np.ndarray:
    """``image_features`` (JSON string, python-literal string or object) -> (N, H, W) uint8 masks."""
    meta = _as_object(raw, f"{where} image_features")
    if not isinstance(meta, dict):
        raise EndpointBadResponse(f"{where} image_features is a {type(meta).__name__}, expected an object")
    shape = _checked_shape(meta.get("shape"), n_prompts, where)
    dtype = _checked_dtype(meta.get("dtype"), where)
    data = _b64decode(meta.get("data"), where)
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise EndpointBadResponse(
            f"{where} mask data has {len(data)} bytes, shape {shape} of {dtype} needs {expected}"
        )
    masks = np.frombuffer(data, dtype=dtype).reshape(shape)
    if dtype == np.bool_:
        return masks.astype(np.uint8) * np.uint8(255)
    # A copy, so callers get an ordinary writable array rather than a view of immutable bytes.
    return masks.copy()


def decode_text_features(raw: Any, n_prompts: int, *, where: str = "row") -> list[str]:
    """``text_features`` (JSON list, or its python-repr string) -> one label per prompt."""
    labels = _as_object(raw, f"{where} text_features") if isinstance(raw, str) else raw
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise EndpointBadResponse(f"{where} text_features is not a list of strings: {str(raw)[:80]!r}")
    if len(labels) != n_prompts:
        raise EndpointBadResponse(f"{where} has {len(labels)} labels for {n_prompts} prompts")
    return labels


def _as_object(raw: Any, what: str) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        pass
    # The REST doc prints the python-literal form ({'data': '...'}); accept it too.
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise EndpointBadResponse(f"{what} is neither JSON nor a python literal: {raw[:80]!r}") from None


def _checked_shape(shape: Any, n_prompts: int, where: str) -> tuple[int, int, int]:
    if (
        not isinstance(shape, list | tuple)
        or len(shape) != 3
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
    ):
        raise EndpointBadResponse(f"{where} mask shape {shape!r} is not [N, H, W]")
    n, h, w = shape
    if n != n_prompts:
        raise EndpointBadResponse(f"{where} has {n} masks for {n_prompts} prompts")
    if not (0 < h <= MAX_MASK_SIDE and 0 < w <= MAX_MASK_SIDE):
        raise EndpointBadResponse(f"{where} mask size {h}x{w} is outside 1..{MAX_MASK_SIDE}")
    return n, h, w


def _checked_dtype(name: Any, where: str) -> np.dtype[Any]:
    dtype: np.dtype[Any] | None = None
    if isinstance(name, str):
        try:
            dtype = np.dtype(name)
        except (TypeError, ValueError, SyntaxError):
            dtype = None
    if dtype is None or not any(dtype == ok for ok in _ACCEPTED_MASK_DTYPES):
        raise EndpointBadResponse(f"{where} mask dtype {name!r} is not uint8")
    return dtype


def _b64decode(data: Any, where: str) -> bytes:
    if not isinstance(data, str):
        raise EndpointBadResponse(f"{where} mask data is a {type(data).__name__}, expected base64 text")
    try:
        return pybase64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        pass
    # encodebytes-style input (newline every 76 characters) misses the fast path; strip and retry.
    try:
        return pybase64.b64decode(data.translate(_WHITESPACE), validate=True)
    except (binascii.Error, ValueError):
        raise EndpointBadResponse(f"{where} mask data is not valid base64") from None
