"""The emulator's classical masks: deterministic, one per prompt, and following the image content."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pybase64
import pytest

from emulator.categories import BIOMED_CLASSES, category_for_prompt
from emulator.protocol import Row, row_result
from emulator.segment import segment_image


def disc(shape: tuple[int, int], centre: tuple[int, int], radius: int) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.circle(mask, centre, radius, 1, thickness=-1)
    return mask.astype(bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def noisy(image: np.ndarray, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, 6, image.shape)
    return np.clip(image.astype(np.float64) + noise, 0, 255).astype(np.uint8)


@pytest.fixture
def organ_with_tumour() -> np.ndarray:
    """CT-like slice: a grey organ (disc r=300) holding a bright round tumour (r=30), on black."""
    image = np.zeros((1024, 1024), np.uint8)
    image[disc(image.shape, (512, 512), 300)] = 120
    image[disc(image.shape, (600, 450), 30)] = 230
    return noisy(image)


def test_same_input_gives_identical_masks(organ_with_tumour: np.ndarray) -> None:
    prompts = ["liver", "liver tumor", "background"]
    first = segment_image(organ_with_tumour, prompts)
    second = segment_image(organ_with_tumour.copy(), prompts)
    assert first.tobytes() == second.tobytes()


@pytest.mark.parametrize("count", [1, 2, 5, 9])
def test_one_mask_per_prompt_at_input_size(organ_with_tumour: np.ndarray, count: int) -> None:
    masks = segment_image(organ_with_tumour, ["liver"] * count)
    assert masks.shape == (count, 1024, 1024)
    assert masks.dtype == np.uint8 and masks.flags.c_contiguous


def test_masks_keep_a_non_square_input_size() -> None:
    image = np.zeros((300, 500), np.uint8)
    image[disc(image.shape, (250, 150), 100)] = 200
    masks = segment_image(image, ["kidney", "tumor"])
    assert masks.shape == (2, 300, 500)


def test_organ_prompt_follows_the_bright_disc(organ_with_tumour: np.ndarray) -> None:
    organ = segment_image(organ_with_tumour, ["liver"])[0] >= 128
    assert iou(organ, disc(organ.shape, (512, 512), 300)) > 0.8


def test_lesion_prompt_finds_the_small_bright_blob(organ_with_tumour: np.ndarray) -> None:
    tumour = segment_image(organ_with_tumour, ["tumor in liver CT"])[0] >= 128
    assert iou(tumour, disc(tumour.shape, (600, 450), 30)) > 0.8


def test_lesion_prompt_is_empty_when_there_is_no_lesion() -> None:
    image = noisy(np.where(disc((512, 512), (256, 256), 150), 140, 0).astype(np.uint8))
    masks = segment_image(image, ["lung nodule"])
    assert masks.max() < 128


def test_background_is_the_complement_of_the_foreground(organ_with_tumour: np.ndarray) -> None:
    background = segment_image(organ_with_tumour, ["background"])[0] >= 128
    assert iou(background, ~disc(background.shape, (512, 512), 300)) > 0.8


def test_left_and_right_pick_the_matching_side() -> None:
    # Radiological convention: the patient's left lung is on the image's right.
    image = np.zeros((512, 512), np.uint8)
    image[disc(image.shape, (130, 256), 90)] = 180
    image[disc(image.shape, (390, 256), 80)] = 180
    left, right = segment_image(noisy(image), ["left lung", "right lung"]) >= 128
    assert iou(left, disc(image.shape, (390, 256), 80)) > 0.8
    assert iou(right, disc(image.shape, (130, 256), 90)) > 0.8


def test_cells_prompt_finds_dark_nuclei_on_a_bright_slide() -> None:
    image = np.full((512, 512), 220, np.uint8)
    centres = [(100, 100), (300, 120), (200, 400), (420, 380)]
    nuclei = np.zeros(image.shape, bool)
    for centre in centres:
        nuclei |= disc(image.shape, centre, 12)
    image[nuclei] = 60
    cells = segment_image(noisy(image), ["neoplastic cells in breast pathology"])[0] >= 128
    assert iou(cells, nuclei) > 0.7


def test_blank_image_gives_empty_organ_masks() -> None:
    masks = segment_image(np.zeros((64, 64), np.uint8), ["liver", "tumor"])
    assert masks.shape == (2, 64, 64) and masks.max() == 0


def test_masks_are_soft_probabilities(organ_with_tumour: np.ndarray) -> None:
    organ = segment_image(organ_with_tumour, ["liver"])[0]
    edge_values = np.unique(organ)
    assert edge_values.min() == 0 and edge_values.max() == 255
    assert len(edge_values) > 10  # blurred edges, not a hard 0/255 mask


@pytest.mark.parametrize(
    ("prompt", "category"),
    [
        ("liver", "liver"),
        ("Left Kidney", "kidney"),
        ("pancreas", "pancreas"),
        ("left heart ventricle", "heart anatomies"),
        ("lateral ventricle", "brain anatomies"),
        ("optic disc", "eye anatomies"),
        ("aorta", "vessel"),
        ("adrenal gland", "other organ"),
        ("liver tumor", "tumor"),
        ("enhancing tumor", "tumor"),
        ("COVID-19 infection", "infection"),
        ("kidney cyst", "other lesion"),
        ("edema", "fluid disturbance"),
        ("lung opacity", "other abnormality"),
        ("neoplastic cells", "histology structure"),
        ("colon glandular structure", "histology structure"),
        ("xyzzy", "other"),
    ],
)
def test_category_comes_from_prompt_keywords(prompt: str, category: str) -> None:
    assert category_for_prompt(prompt) == category
    assert category in BIOMED_CLASSES


def test_image_features_string_is_exactly_json_dumps_of_the_mask_metadata() -> None:
    image = np.zeros((6, 8), np.uint8)
    image[2:4, 2:6] = 200
    result = row_result(Row(gray=image, prompts=["liver", "tumor"]))
    masks = segment_image(image, ["liver", "tumor"])
    expected = json.dumps({"data": pybase64.b64encode(masks.tobytes()).decode(), "shape": [2, 6, 8], "dtype": "uint8"})
    assert result["image_features"] == expected
    assert result["text_features"] == ["liver", "tumor"]
