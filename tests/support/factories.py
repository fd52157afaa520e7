"""Test data helpers: tenants with keys, and small images."""

from __future__ import annotations

import uuid

import cv2
import numpy as np

from medparse.settings import Settings
from runtime.cli import create_tenant


def random_name(prefix: str = "tenant") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def new_tenant(settings: Settings) -> tuple[uuid.UUID, str]:
    return create_tenant(settings, random_name())


def organ_image(width: int = 320, height: int = 240, *, seed: int = 1) -> tuple[bytes, np.ndarray]:
    """A gray image with one bright organ-like ellipse; returns (PNG bytes, the ellipse mask)."""
    img = np.full((height, width), 30, np.uint8)
    mask = np.zeros((height, width), np.uint8)
    center = (width // 2 - width // 8, height // 2)
    axes = (max(2, width // 5), max(2, height // 4))
    cv2.ellipse(img, center, axes, 0, 0, 360, 200, -1)
    cv2.ellipse(mask, center, axes, 0, 0, 360, 1, -1)
    noise = np.random.default_rng(seed).normal(0, 3, img.shape)
    img = np.clip(img + noise, 0, 255).astype(np.uint8)
    ok, png = cv2.imencode(".png", img)
    assert ok
    return png.tobytes(), mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def ct_slice_png(n: int = 128, seed: int = 3) -> bytes:
    """An n x n gray CT-like slice (body ellipse, two organs, noise) as PNG; ~10 kB at 128."""
    rng = np.random.default_rng(seed)
    img = np.full((n, n), 20, np.uint8)
    cv2.ellipse(img, (n // 2, n // 2), (int(n * 0.42), int(n * 0.32)), 0, 0, 360, 90, -1)
    cv2.ellipse(img, (n // 2 - n // 8, n // 2), (n // 6, n // 8), 0, 0, 360, 200, -1)
    cv2.ellipse(img, (n // 2 + n // 5, n // 2 + n // 12), (n // 14, n // 10), 0, 0, 360, 160, -1)
    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    ok, png = cv2.imencode(".png", img)
    assert ok
    return png.tobytes()
