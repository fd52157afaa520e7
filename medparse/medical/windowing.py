"""Intensity: high-bit-depth values (HU, MR signal, 16-bit or float pixels) to the model's 8 bits.

The rules of the official samples (protocol notes section 4.1, healthcareai_toolkit):
- only sources that are not 8 bit are normalised; 8-bit pixels are sent as they are (a ``window``
  given for an 8-bit source is recorded as not applied);
- a window (``abdomen`` ... ``pancreas`` CT presets, or ``{center, width}`` in input units, i.e.
  ``[center - width/2, center + width/2]``) clips to its bounds;
- otherwise the bounds are the 0.5 and 99.5 percentiles of all pixels (the toolkit's default);
- then ``(clip(x, lo, hi) - lo) / (hi - lo) * 255``, truncated to uint8. lo == hi gives black.
For a volume the percentiles are taken over the whole volume once, not per slice, so every slice
gets the same contrast (the samples handle one slice at a time and have no such choice to make).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from medparse.imaging import PERCENTILES, _scale_lut, _u16_percentiles

#: The samples' CT presets (``special_normalizations`` / ``CT_WINDOWS``): HU bounds [lo, hi].
CT_PRESETS: dict[str, tuple[float, float]] = {
    "abdomen": (-150.0, 250.0),
    "lung": (-1000.0, 1000.0),
    "pelvis": (-55.0, 200.0),
    "liver": (-25.0, 230.0),
    "colon": (-68.0, 187.0),
    "pancreas": (-100.0, 200.0),
}


@dataclass(frozen=True)
class Bounds:
    """The clip-and-scale of one image or volume: ``lo``/``hi`` and how they were chosen."""

    lo: float
    hi: float
    params: dict[str, Any]

    def apply(self, values: np.ndarray) -> np.ndarray:
        """``values`` (any real dtype) -> uint8 with these bounds; NaN counts as lo, +-inf as the nearest bound."""
        if values.dtype.kind in "ui" and values.size and _fits_u16(values):
            return np.take(_scale_lut(self.lo, self.hi), values.astype(np.uint16, copy=False))
        with np.errstate(all="ignore"):
            floats = np.nan_to_num(values.astype(np.float64), nan=self.lo, posinf=self.hi, neginf=self.lo)
            if self.hi <= self.lo:
                return np.zeros(values.shape, np.uint8)
            np.clip(floats, self.lo, self.hi, out=floats)
            floats -= self.lo
            floats /= self.hi - self.lo
            floats *= 255.0
            return floats.astype(np.uint8)


def window_bounds(window: str | Mapping[str, Any]) -> tuple[float, float, dict[str, Any]]:
    """A preset name or ``{center, width}`` -> (lo, hi, provenance)."""
    if isinstance(window, str):
        lo, hi = CT_PRESETS[window]
        return lo, hi, {"method": "window", "preset": window, "low": lo, "high": hi}
    center, width = float(window["center"]), float(window["width"])
    lo, hi = center - width / 2, center + width / 2
    return lo, hi, {"method": "window", "center": center, "width": width, "low": lo, "high": hi}


def bounds_for(values: np.ndarray, window: str | Mapping[str, Any] | None) -> Bounds:
    """The bounds for ``values`` (an image or a whole volume): the window, or the percentiles."""
    source = {"source_dtype": str(values.dtype), "rounding": "truncate"}
    if window is not None:
        lo, hi, params = window_bounds(window)
        return Bounds(lo, hi, {**params, **source})
    lo, hi = percentile_bounds(values)
    return Bounds(lo, hi, {"method": "percentile", "percentiles": list(PERCENTILES), "low": lo, "high": hi, **source})


def percentile_bounds(values: np.ndarray) -> tuple[float, float]:
    """np.percentile(values, PERCENTILES) over finite values; exact, and fast for integers."""
    if values.size == 0:
        return 0.0, 0.0
    if values.dtype.kind in "ui":
        low, high = int(values.min()), int(values.max())
        if high - low <= 0xFFFF:
            shifted = values.astype(np.int64) - low if low else values
            lo, hi = _u16_percentiles(shifted.astype(np.uint16, copy=False), PERCENTILES)
            return lo + low, hi + low
    with np.errstate(all="ignore"):
        return _float_bounds(values)


def _float_bounds(values: np.ndarray) -> tuple[float, float]:
    flat = values.reshape(-1).astype(np.float64, copy=False)
    finite = np.isfinite(flat)
    if not finite.all():
        flat = flat[finite]
    if flat.size == 0:
        return 0.0, 0.0
    lo, hi = (float(v) for v in np.percentile(flat, PERCENTILES))
    return lo, hi


def to_uint8(values: np.ndarray, window: str | Mapping[str, Any] | None) -> tuple[np.ndarray, dict[str, Any]]:
    """One image (H, W) or (H, W, 3) to uint8 with the samples' rules (see the module docstring)."""
    if values.dtype == np.uint8:
        params: dict[str, Any] = {"method": "none"}
        if window is not None:
            params["window_not_applied"] = "the source is 8 bit and is used as it is"
        return values, params
    if values.ndim == 3:
        return _colour_to_uint8(values)
    bounds = bounds_for(values, window)
    return bounds.apply(values), bounds.params


def _colour_to_uint8(values: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """High-bit-depth RGB: scaled by its full range (windows and percentiles are for gray values)."""
    if values.dtype.kind == "u":
        bits = max(8, int(values.max()).bit_length()) if values.size else 8
        out = (values >> (bits - 8)).astype(np.uint8) if bits > 8 else values.astype(np.uint8)
        return out, {"method": "shift", "bits": bits, "source_dtype": str(values.dtype)}
    bounds = bounds_for(values, None)
    return bounds.apply(values), bounds.params


def _fits_u16(values: np.ndarray) -> bool:
    return 0 <= int(values.min()) and int(values.max()) <= 0xFFFF
