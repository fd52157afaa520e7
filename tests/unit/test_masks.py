from __future__ import annotations

import io
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from medparse.imaging import Geometry
from medparse.masks import (
    MASK_ENCODING,
    area_and_bbox,
    decode_mask,
    encode_mask,
    mask_png,
    masks_npz,
    masks_to_original,
)


def forward(mask01: np.ndarray, geometry: Geometry) -> np.ndarray:
    """What the model would return for a perfect segmentation: the mask pushed through pad + resize."""
    probs = mask01.astype(np.uint8) * 255
    shrinking = geometry.scale < 1
    resized = cv2.resize(probs, (geometry.resized_w, geometry.resized_h),
                         interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
    return cv2.copyMakeBorder(resized, geometry.pad_top, geometry.pad_bottom, geometry.pad_left,
                              geometry.pad_right, cv2.BORDER_CONSTANT, value=0)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def ellipse_mask(height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    centre = (int(width * 0.45), int(height * 0.55))
    axes = (max(1, int(width * 0.3)), max(1, int(height * 0.2)))
    cv2.ellipse(mask, centre, axes, 20, 0, 360, 1, -1)
    return mask


# --- masks_to_original ----------------------------------------------------------------------------

@pytest.mark.parametrize(("height", "width"), [
    (512, 512), (1536, 2048), (301, 200), (333, 1001), (1025, 513), (4000, 3000), (80, 2500),
])
def test_a_mask_survives_the_round_trip_through_the_model_geometry(height: int, width: int) -> None:
    geometry = Geometry.fit(height, width)
    original = ellipse_mask(height, width)
    back = masks_to_original(forward(original, geometry)[None], geometry)
    assert back.shape == (1, height, width) and back.dtype == np.uint8
    assert set(np.unique(back)) <= {0, 1}
    assert iou(back[0], original) > 0.95


@pytest.mark.parametrize(("height", "width"), [(7, 3), (3, 7), (1, 1), (2, 9)])
def test_tiny_images_map_back_pixel_for_pixel(height: int, width: int) -> None:
    geometry = Geometry.fit(height, width)
    rng = np.random.default_rng(height * 10 + width)
    original = (rng.random((height, width)) < 0.5).astype(np.uint8)
    original.flat[0] = 1
    back = masks_to_original(forward(original, geometry)[None], geometry)
    assert np.array_equal(back[0], original)


def test_a_one_pixel_stripe_survives_when_the_model_sees_it_enlarged() -> None:
    geometry = Geometry.fit(300, 200)
    stripe = np.zeros((300, 200), np.uint8)
    stripe[:, 77] = 1
    back = masks_to_original(forward(stripe, geometry)[None], geometry)
    assert np.array_equal(back[0], stripe)


def test_one_model_pixel_maps_back_to_one_model_pixel_of_the_original() -> None:
    # A 4000x3000 upload is shrunk 3.9x: a 1 px stripe in the model's square is ~3.9 px of the original.
    geometry = Geometry.fit(3000, 4000)
    probs = np.zeros((1, 1024, 1024), np.uint8)
    probs[0, :, 500] = 255
    back = masks_to_original(probs, geometry)[0]
    columns = np.flatnonzero(back[1500])
    expected_centre = (500 + 0.5 - geometry.pad_left) * 4000 / geometry.resized_w - 0.5
    assert abs(columns.mean() - expected_centre) < 1
    assert abs(len(columns) - 4000 / 1024) <= 1
    assert (back.any(axis=1)).all()  # the stripe runs the full height


def test_other_square_sizes_and_cropped_stacks_are_understood() -> None:
    geometry = Geometry.fit(301, 450)
    original = ellipse_mask(301, 450)
    full = forward(original, geometry)
    half = cv2.resize(full, (512, 512), interpolation=cv2.INTER_AREA)
    assert iou(masks_to_original(half[None], geometry)[0], original) > 0.95
    cropped = full[geometry.pad_top:geometry.pad_top + geometry.resized_h]
    assert cropped.shape == (geometry.resized_h, geometry.resized_w)
    assert np.array_equal(masks_to_original(cropped[None], geometry), masks_to_original(full[None], geometry))


def test_threshold_is_128_and_every_prompt_is_kept() -> None:
    geometry = Geometry.fit(100, 60)
    probs = np.stack([np.full((1024, 1024), 128, np.uint8), np.full((1024, 1024), 127, np.uint8)])
    back = masks_to_original(probs, geometry)
    assert back.shape == (2, 100, 60)
    assert back[0].all() and not back[1].any()
    assert masks_to_original(np.zeros((0, 1024, 1024), np.uint8), geometry).shape == (0, 100, 60)


@pytest.mark.parametrize("bad", [
    np.zeros((1024, 1024), np.uint8), np.zeros((1, 1024, 1024), np.float32), np.zeros((1, 1024, 1000), np.uint8),
])
def test_unexpected_mask_arrays_are_refused(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        masks_to_original(bad, Geometry.fit(100, 60))


# --- area and bbox --------------------------------------------------------------------------------

def test_bbox_is_x0_y0_x1_y1_with_exclusive_ends() -> None:
    mask = np.zeros((40, 60), np.uint8)
    mask[3, 5] = 1
    assert area_and_bbox(mask) == (1, [5, 3, 6, 4])
    mask[10:20, 30:45] = 1
    assert area_and_bbox(mask) == (151, [5, 3, 45, 20])
    assert area_and_bbox(np.zeros((40, 60), np.uint8)) == (0, None)
    assert area_and_bbox(mask.astype(bool)) == (151, [5, 3, 45, 20])
    assert area_and_bbox(mask * 255) == (151, [5, 3, 45, 20])


def test_bbox_agrees_with_numpy_on_random_masks() -> None:
    rng = np.random.default_rng(9)
    for _ in range(20):
        mask = (rng.random((int(rng.integers(1, 80)), int(rng.integers(1, 80)))) < rng.random() * 0.05)
        area, bbox = area_and_bbox(mask.astype(np.uint8))
        assert area == int(mask.sum())
        if area:
            ys, xs = np.nonzero(mask)
            assert bbox == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        else:
            assert bbox is None


# --- storage --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("height", "width"), [(1024, 1024), (7, 3), (1, 1), (13, 17), (0, 5)])
def test_mask_codec_round_trips_exactly(height: int, width: int) -> None:
    rng = np.random.default_rng(height + width)
    for mask in (rng.random((height, width)) < 0.3, np.ones((height, width), bool), np.zeros((height, width))):
        data = encode_mask(mask.astype(np.uint8))
        decoded = decode_mask(data, height, width)
        assert decoded.dtype == np.uint8 and decoded.shape == (height, width)
        assert np.array_equal(decoded, mask.astype(np.uint8))
    assert MASK_ENCODING == "packbits-zlib1"


def test_mask_codec_is_small_and_bounded() -> None:
    blob = np.zeros((1024, 1024), np.uint8)
    cv2.ellipse(blob, (500, 400), (90, 60), 30, 0, 360, 1, -1)
    assert len(encode_mask(blob)) < 4096
    noise = (np.random.default_rng(1).random((1024, 1024)) < 0.5).astype(np.uint8)
    assert len(encode_mask(noise)) <= 132 * 1024


def test_decode_refuses_data_that_does_not_match_the_size() -> None:
    data = encode_mask(np.ones((10, 10), np.uint8))
    for bad in (
        lambda: decode_mask(data, 10, 11),
        lambda: decode_mask(data, 9, 10),
        lambda: decode_mask(data[:-3], 10, 10),
        lambda: decode_mask(data + b"junk", 10, 10),
        lambda: decode_mask(b"not zlib", 10, 10),
        lambda: decode_mask(zlib.compress(b"\xff" * 10**6), 10, 10),
        lambda: decode_mask(data, -1, 10),
    ):
        with pytest.raises(ValueError):
            bad()


def test_mask_png_is_8_bit_gray_with_0_and_255() -> None:
    mask = np.zeros((30, 20), np.uint8)
    mask[5:9, 2:7] = 1
    image = Image.open(io.BytesIO(mask_png(mask)))
    assert image.format == "PNG" and image.mode == "L" and image.size == (20, 30)
    pixels = np.asarray(image)
    assert set(np.unique(pixels)) == {0, 255}
    assert np.array_equal(pixels == 255, mask == 1)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(mask_png(mask.astype(bool))))), pixels)


def test_masks_npz_holds_one_uint8_array_of_0_and_1() -> None:
    masks = np.zeros((3, 25, 40), np.uint8)
    masks[0, 2:5, 3:9] = 1
    masks[2, 10:, :] = 255  # any non-zero value is foreground
    with np.load(io.BytesIO(masks_npz(masks))) as archive:
        assert archive.files == ["masks"]
        stored = archive["masks"]
    assert stored.dtype == np.uint8 and stored.shape == (3, 25, 40)
    assert np.array_equal(stored, (masks != 0).astype(np.uint8))
    with pytest.raises(ValueError):
        masks_npz(masks[0])
