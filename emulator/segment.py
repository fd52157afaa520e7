"""Deterministic classical segmentation that stands in for the model's masks.

This is NOT MedImageParse: it thresholds the image (Otsu), labels connected regions and picks regions by the
kind of target the prompt names (see ``categories.TargetKind``). The masks follow the image content, so a
client can check geometry end to end, and the same input always gives the same bytes.

Analysis runs on a copy whose long side is at most ``ANALYSIS_SIDE`` pixels, which keeps a 1024x1024
request to a few milliseconds; scaling the chosen region back up with linear interpolation after a small
blur gives the soft 0..255 edges of a probability map (foreground >= 128, as for the real model).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import cv2
import numpy as np

from emulator.categories import TargetKind, category_for_prompt, target_kind

ANALYSIS_SIDE = 256
#: Edge softening, in analysis pixels (about 4 output pixels for a 1024 image).
EDGE_SIGMA = 1.0
#: A lesion covers at most this share of the image; larger bright regions are organs.
LESION_MAX_SHARE = 0.05
#: Lesions fill at least this share of their bounding box (compact blobs, not streaks).
LESION_MIN_EXTENT = 0.35
#: A second, brighter intensity level inside the foreground counts only if it differs this much in mean.
HOT_MIN_CONTRAST = 40.0

_OPEN_KERNEL = np.ones((3, 3), np.uint8)
_Components = tuple[np.ndarray, np.ndarray, np.ndarray]  # labels, stats, centroids


def segment_image(gray: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
    """One uint8 probability mask per prompt, shape ``(len(prompts), H, W)``, at the input's size."""
    height, width = gray.shape
    regions = _ImageRegions(_analysis_copy(gray))
    masks = np.empty((len(prompts), height, width), np.uint8)
    by_target: dict[tuple[TargetKind, str], np.ndarray] = {}
    for index, prompt in enumerate(prompts):
        target = (target_kind(prompt, category_for_prompt(prompt)), _side(prompt))
        if target not in by_target:
            by_target[target] = _soften(regions.select(*target), width, height)
        masks[index] = by_target[target]
    return masks


def _analysis_copy(gray: np.ndarray) -> np.ndarray:
    height, width = gray.shape
    scale = ANALYSIS_SIDE / max(height, width)
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(gray, (3, 3), 0)


def _side(prompt: str) -> str:
    words = prompt.lower().split()
    return "left" if "left" in words else "right" if "right" in words else ""


def _soften(binary: np.ndarray, width: int, height: int) -> np.ndarray:
    soft = cv2.GaussianBlur(binary * np.uint8(255), (0, 0), EDGE_SIGMA)
    if soft.shape != (height, width):
        soft = cv2.resize(soft, (width, height), interpolation=cv2.INTER_LINEAR)
    return soft


def _components(binary: np.ndarray) -> _Components:
    _, labels, stats, centroids = cv2.connectedComponentsWithStats(binary, connectivity=8)
    return labels, stats, centroids


class _ImageRegions:
    """Regions of one analysis image, each computed on first use and shared by all its prompts."""

    def __init__(self, image: np.ndarray) -> None:
        self.image = image
        self.pixels = image.size
        self.min_area = max(4, int(0.0002 * image.size))

    @cached_property
    def foreground(self) -> np.ndarray:
        # A constant image has no foreground: Otsu's threshold equals the value and nothing exceeds it.
        _, binary = cv2.threshold(self.image, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        return cv2.morphologyEx(binary, cv2.MORPH_OPEN, _OPEN_KERNEL)

    @cached_property
    def bright(self) -> _Components:
        return _components(self.foreground)

    @cached_property
    def dark(self) -> _Components:
        return _components(1 - self.foreground)

    @cached_property
    def hot(self) -> _Components | None:
        """Regions clearly brighter than the rest of the foreground (a bright lesion inside an organ)."""
        inside = self.image[self.foreground > 0]
        if inside.size < 2 * self.min_area:
            return None
        level, _ = cv2.threshold(inside.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        above, below = inside[inside > level], inside[inside <= level]
        if above.size == 0 or below.size == 0 or above.mean() - below.mean() < HOT_MIN_CONTRAST:
            return None
        hot = ((self.image > level) & (self.foreground > 0)).astype(np.uint8)
        return _components(cv2.morphologyEx(hot, cv2.MORPH_OPEN, _OPEN_KERNEL))

    def select(self, kind: TargetKind, side: str) -> np.ndarray:
        """Binary (0/1) uint8 mask of the regions that answer a prompt of this kind."""
        if kind is TargetKind.organ:
            return self._organ(side)
        if kind is TargetKind.lesion:
            return self._small_blobs(self.hot) | self._small_blobs(self.bright, skip_largest=True)
        if kind is TargetKind.cells:
            return self._small_blobs(self.dark, skip_largest=True, min_extent=0.0)
        if kind is TargetKind.background:
            return 1 - self.foreground
        return self.foreground.copy()

    def _organ(self, side: str) -> np.ndarray:
        labels, stats, centroids = self.bright
        candidates = list(range(1, len(stats)))
        middle = self.image.shape[1] / 2
        # Radiological convention: the patient's left is on the image's right.
        lateral = [i for i in candidates if (centroids[i][0] > middle) == (side == "left")] if side else []
        pool = lateral or candidates
        if not pool:
            return np.zeros_like(self.foreground)
        largest = max(pool, key=lambda i: (stats[i, cv2.CC_STAT_AREA], -i))
        organ = (labels == largest).astype(np.uint8)
        # An organ includes what lies inside it (e.g. a darker lesion), so fill its holes.
        contours, _ = cv2.findContours(organ, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        return cv2.drawContours(organ, contours, -1, 1, thickness=cv2.FILLED)

    def _small_blobs(
        self, found: _Components | None, skip_largest: bool = False, min_extent: float = LESION_MIN_EXTENT
    ) -> np.ndarray:
        if found is None:
            return np.zeros_like(self.foreground)
        labels, stats, _ = found
        areas = stats[1:, cv2.CC_STAT_AREA]
        extents = areas / np.maximum(stats[1:, cv2.CC_STAT_WIDTH] * stats[1:, cv2.CC_STAT_HEIGHT], 1)
        keep = (areas >= self.min_area) & (areas <= LESION_MAX_SHARE * self.pixels) & (extents >= min_extent)
        if skip_largest and areas.size:
            keep[int(np.argmax(areas))] = False
        chosen = np.concatenate(([False], keep))
        return chosen[labels].astype(np.uint8)
