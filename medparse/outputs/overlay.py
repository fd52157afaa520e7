"""The overlay PNG: the windowed input with every mask filled in its own colour, outlined, and a legend.

The input is shown as the model saw it (after windowing / normalisation, before padding). Small
images are enlarged by an integer factor (nearest neighbour, so pixels stay square and masks exact)
until the long side reaches ``MIN_SIDE``, so the outlines and the legend stay legible. The legend
under the image lists ``prompt -> label`` per colour; OpenCV's Hershey font is ASCII only, so other
characters are shown as ``?`` (the exact prompts are in the job).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from PIL import Image, PngImagePlugin

#: Distinct colours (RGB), Tableau/Okabe-Ito inspired, for up to 16 prompts (then they repeat).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195),
)
FILL_ALPHA = 0.35
MIN_SIDE = 512
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def overlay_png(
    pixels: np.ndarray, masks01: np.ndarray, legend: Sequence[tuple[str, str]], text: dict[str, str] | None = None
) -> bytes:
    """An RGB PNG of ``pixels`` (H, W) or (H, W, 3) uint8 with ``masks01`` (N, H, W) drawn over it.

    ``legend`` holds (prompt, label) per mask; ``text`` goes into PNG tEXt chunks (provenance).
    """
    if masks01.ndim != 3 or masks01.shape[1:] != pixels.shape[:2]:
        raise ValueError(f"masks {masks01.shape} do not match the image {pixels.shape}")
    rgb = cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB) if pixels.ndim == 2 else pixels.copy()
    scale = max(1, math.ceil(MIN_SIDE / max(rgb.shape[:2])))
    if scale > 1:
        rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    canvas = rgb.astype(np.float32)
    thickness = max(1, round(max(rgb.shape[:2]) / 400))
    outlines = []
    for index, mask in enumerate(masks01):
        m = np.not_equal(mask, 0).astype(np.uint8)
        if scale > 1:
            m = cv2.resize(m, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        fill = np.array(PALETTE[index % len(PALETTE)], np.float32)
        inside = m.astype(bool)
        canvas[inside] = canvas[inside] * (1 - FILL_ALPHA) + fill * FILL_ALPHA
        contours, _ = cv2.findContours(m, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        outlines.append((contours, PALETTE[index % len(PALETTE)]))
    image = canvas.astype(np.uint8)
    for contours, colour in outlines:
        cv2.drawContours(image, contours, -1, colour, thickness, lineType=cv2.LINE_AA)
    composed = np.vstack([image, _legend(image.shape[1], legend)])
    return _encode(composed, {"Software": "medparse-gateway", **(text or {})}, scale)


def _legend(width: int, legend: Sequence[tuple[str, str]]) -> np.ndarray:
    font_scale = max(0.4, min(1.0, width / 900))
    row = int(28 * font_scale / 0.6)
    panel = np.full((row * len(legend) + row // 2, width, 3), 24, np.uint8)
    box = max(8, row // 2)
    for index, (prompt, label) in enumerate(legend):
        y = row * index + row // 2
        colour = PALETTE[index % len(PALETTE)]
        cv2.rectangle(panel, (8, y), (8 + box, y + box), colour, thickness=-1)
        caption = _ascii(f"{index}: {prompt} -> {label or 'n/a'}")
        cv2.putText(panel, caption, (16 + box, y + box), _FONT, font_scale, (235, 235, 235), 1, cv2.LINE_AA)
    return panel


def _ascii(text: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)[:120]


def _encode(rgb: np.ndarray, text: dict[str, str], scale: int) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in {**text, "Overlay-Scale": str(scale)}.items():
        info.add_itxt(key, value)
    buffer = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buffer, format="PNG", pnginfo=info, compress_level=3)
    return buffer.getvalue()


def provenance_text(provenance: dict[str, Any]) -> dict[str, str]:
    import json

    return {"Medparse-Provenance": json.dumps(provenance, separators=(",", ":"), default=str)}
