from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import orjson
import pybase64
import pytest

from medparse.endpoint.errors import EndpointBadResponse, EndpointRejectedInput
from medparse.endpoint.protocol import (
    ScoreRow,
    build_request_body,
    join_prompts,
    parse_response,
    split_prompts,
)

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def masks_for(n: int, h: int = 8, w: int = 6, *, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w), dtype=np.uint8)


def features_dict(masks: np.ndarray, *, data: str | None = None, **overrides: object) -> dict[str, object]:
    meta: dict[str, object] = {
        "data": data if data is not None else base64.b64encode(masks.tobytes()).decode(),
        "shape": list(masks.shape),
        "dtype": str(masks.dtype),
    }
    meta.update(overrides)
    return meta


def answer(*items: dict[str, object]) -> bytes:
    return json.dumps(list(items)).encode()


def item(masks: np.ndarray, labels: object = None, **overrides: Any) -> dict[str, object]:
    n = masks.shape[0]
    return {
        "image_features": json.dumps(features_dict(masks, **overrides)),
        "text_features": labels if labels is not None else ["liver"] * n,
    }


def rows_with(*prompt_counts: int) -> list[ScoreRow]:
    return [ScoreRow(PNG, [f"organ {i}" for i in range(n)]) for n in prompt_counts]


def test_request_body_is_split_orientation_with_plain_base64_and_joined_prompts() -> None:
    rows = [ScoreRow(PNG, ["liver", "left kidney"]), ScoreRow(b"\x89PNG2", ["tumor"])]

    body = orjson.loads(build_request_body(rows))

    assert body == {
        "input_data": {
            "columns": ["image", "text"],
            "index": [0, 1],
            "data": [
                [base64.b64encode(PNG).decode(), "liver & left kidney"],
                [base64.b64encode(b"\x89PNG2").decode(), "tumor"],
            ],
        }
    }
    assert "\n" not in body["input_data"]["data"][0][0]


def test_joined_prompts_split_back_the_way_the_server_splits_them() -> None:
    prompts = ["neoplastic cells", "inflammatory cells", "liver"]

    assert split_prompts(join_prompts(prompts)) == prompts
    assert split_prompts("neoplastic & inflammatory cells ") == ["neoplastic", "inflammatory cells"]


@pytest.mark.parametrize(
    "rows",
    [
        [],
        [ScoreRow(PNG, [])],
        [ScoreRow(PNG, ["liver & spleen"])],
        [ScoreRow(PNG, ["liver", "  "])],
        [ScoreRow(b"", ["liver"])],
    ],
    ids=["no-rows", "no-prompts", "ampersand", "blank-prompt", "no-image"],
)
def test_rows_the_server_would_split_differently_are_refused_before_sending(rows: list[ScoreRow]) -> None:
    with pytest.raises(EndpointRejectedInput) as info:
        build_request_body(rows)

    assert info.value.code == "endpoint_rejected_input"


def test_json_string_image_features_decode_to_the_sent_masks_in_prompt_order() -> None:
    first, second = masks_for(2, seed=1), masks_for(1, 4, 5, seed=2)

    results = parse_response(answer(item(first, ["liver", "pancreas"]), item(second)), rows_with(2, 1))

    np.testing.assert_array_equal(results[0].masks, first)
    np.testing.assert_array_equal(results[1].masks, second)
    assert results[0].masks.dtype == np.uint8 and results[0].masks.flags.writeable
    assert results[0].labels == ["liver", "pancreas"]


def test_python_literal_image_features_as_printed_in_the_docs_are_accepted() -> None:
    masks = masks_for(2)
    literal = repr(features_dict(masks))  # {'data': '...', 'shape': [2, 8, 6], 'dtype': 'uint8'}
    assert literal.startswith("{'data'")

    [result] = parse_response(answer({"image_features": literal, "text_features": ["a", "b"]}), rows_with(2))

    np.testing.assert_array_equal(result.masks, masks)


def test_already_decoded_image_features_object_is_accepted() -> None:
    masks = masks_for(3)

    [result] = parse_response(
        answer({"image_features": features_dict(masks), "text_features": ["a", "b", "c"]}), rows_with(3)
    )

    np.testing.assert_array_equal(result.masks, masks)


def test_mime_base64_with_newlines_is_accepted() -> None:
    masks = masks_for(2, 40, 40)
    mime = base64.encodebytes(masks.tobytes()).decode()
    assert "\n" in mime

    [result] = parse_response(answer(item(masks, data=mime)), rows_with(2))

    np.testing.assert_array_equal(result.masks, masks)


def test_python_repr_text_features_are_accepted() -> None:
    masks = masks_for(2)

    [result] = parse_response(answer(item(masks, "['liver', 'pancreas']")), rows_with(2))

    assert result.labels == ["liver", "pancreas"]


def test_boolean_masks_are_widened_to_0_and_255() -> None:
    masks = np.array([[[True, False], [False, True]]])

    [result] = parse_response(answer(item(masks, ["liver"])), rows_with(1))

    assert result.masks.dtype == np.uint8
    np.testing.assert_array_equal(result.masks, masks.astype(np.uint8) * 255)


def bad_responses() -> dict[str, tuple[bytes, list[ScoreRow]]]:
    two = masks_for(2)
    good = item(two)
    valid_b64 = pybase64.b64encode(two.tobytes()).decode()
    return {
        "not-json": (b"<html>oops</html>", rows_with(2)),
        "not-a-list": (json.dumps({"error": "x"}).encode(), rows_with(2)),
        "too-few-rows": (answer(good), rows_with(2, 2)),
        "too-many-rows": (answer(good, good), rows_with(2)),
        "row-not-object": (json.dumps([[1, 2]]).encode(), rows_with(2)),
        "no-image-features": (answer({"text_features": ["a", "b"]}), rows_with(2)),
        "image-features-garbage": (answer({"image_features": "{data: nope"}), rows_with(1)),
        "image-features-list": (answer({"image_features": "[1, 2]", "text_features": ["a"]}), rows_with(1)),
        "wrong-mask-count": (answer(good), rows_with(3)),
        "two-dims": (answer(item(two, shape=[2, 48])), rows_with(2)),
        "four-dims": (answer(item(two, shape=[2, 8, 6, 1])), rows_with(2)),
        "shape-not-ints": (answer(item(two, shape=[2, 8.0, 6])), rows_with(2)),
        "shape-bool": (answer(item(two, shape=[2, True, 48])), rows_with(2)),
        "too-large": (answer(item(two, shape=[2, 8192, 1])), rows_with(2)),
        "zero-size": (answer(item(two, shape=[2, 0, 6])), rows_with(2)),
        "byte-count-mismatch": (answer(item(two, shape=[2, 8, 5])), rows_with(2)),
        "truncated-data": (answer(item(two, data=valid_b64[:-8])), rows_with(2)),
        "bad-base64": (answer(item(two, data="@@not*base64@@")), rows_with(2)),
        "non-ascii-base64": (answer(item(two, data="ÄÖÜ" * 16)), rows_with(2)),
        "data-not-string": (answer({"image_features": features_dict(two) | {"data": 5}}), rows_with(2)),
        "float-dtype": (answer(item(two, dtype="float32", shape=[2, 4, 3])), rows_with(2)),
        "object-dtype": (answer(item(two, dtype="O")), rows_with(2)),
        "nonsense-dtype": (answer(item(two, dtype="not-a-dtype")), rows_with(2)),
        "missing-dtype": (answer(item(two, dtype=None)), rows_with(2)),
        "labels-missing": (answer({"image_features": good["image_features"]}), rows_with(2)),
        "labels-wrong-count": (answer(item(two, ["liver"])), rows_with(2)),
        "labels-not-strings": (answer(item(two, [1, 2])), rows_with(2)),
        "labels-garbage-string": (answer(item(two, "liver, pancreas")), rows_with(2)),
    }


@pytest.mark.parametrize("case", list(bad_responses()))
def test_malformed_responses_raise_bad_response(case: str) -> None:
    body, rows = bad_responses()[case]

    with pytest.raises(EndpointBadResponse) as info:
        parse_response(body, rows)

    assert info.value.code == "endpoint_bad_response"
    assert info.value.message
