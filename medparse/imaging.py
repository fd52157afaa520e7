"""Uploads in, the model's 1024x1024 PNG out, plus the geometry to map its masks back.

``probe_image`` runs in the gateway at upload time (is this an image we will take?);
``prepare_image`` runs in the worker and produces the model input. Both decode with Pillow,
restricted to PNG, JPEG and TIFF, with the format taken from the file's magic bytes; a plain PNG
is probed by ``medparse.png_probe`` instead, which checks all that a decode could fail on for a
third of the CPU.

The preprocessing follows the official samples (healthcareai_toolkit, see the protocol notes
section 4.1) with two deliberate differences, both much cheaper:
- resize first, pad second, to an exact square with the odd pixel at the bottom/right. The samples
  pad ``abs(H-W)//2`` on both sides and then resize, which leaves odd differences 1 px non-square
  and slightly stretched; our ``Geometry`` is exact, so masks map back exactly.
- OpenCV resampling (INTER_AREA when shrinking, INTER_CUBIC when enlarging) instead of
  ``skimage.transform.resize(order=3, anti_aliasing=True)``, 10-100x faster.
bench/worker.py measures the pixel difference against the samples' path (< 0.5 gray levels).
"""

from __future__ import annotations

import io
import math
import struct
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
from PIL import Image

from medparse.medical.formats import sniff_medical
from medparse.png_probe import PngDamaged, probe_png

RejectCode = Literal["unsupported_format", "corrupt_image", "image_too_large", "empty_image", "image_too_complex"]

#: The toolkit's default normalisation for non-8-bit images: 0.5 and 99.5 percentiles of all pixels.
PERCENTILES = (0.5, 99.5)

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),  # BigTIFF
    (b"MM\x00+", "tiff"),
)
_PILLOW_FORMAT = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF"}
_NATIVE_MODES = {"L", "RGB", "I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
_GRAY_MODES = {"1", "LA", "La"}
_BITS = {"1": 1, "I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16, "I;16S": 16, "I": 32, "F": 32}
_ORIENTATION_TAG = 0x0112


class ImageRejected(Exception):
    """The upload is not an image we can segment; ``message`` tells the user what to do."""

    def __init__(self, code: RejectCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code: str = code
        self.message = message


@dataclass(frozen=True)
class ImageInfo:
    format: str  # "png" | "jpeg" | "tiff", from the content
    width: int  # after EXIF orientation
    height: int
    channels: int  # bands as stored: alpha included, a palette image counts 1
    bit_depth: int  # bits per sample as stored
    #: DICOM/NIfTI only (medparse.medical.inputs): frames, volume shape, slice axis; stored as jobs.input_meta
    details: dict[str, Any] | None = None


@dataclass(frozen=True)
class Geometry:
    """Where the original image sits inside the model's square.

    Forward: resize (orig_h, orig_w) to (resized_h, resized_w), then pad with black to
    target x target, ``pad_top``/``pad_left`` before, the rest (the odd pixel) after.
    """

    orig_h: int
    orig_w: int
    scale: float  # target / max(orig_h, orig_w); per-axis ratios differ by the rounding of the short side
    resized_h: int
    resized_w: int
    pad_top: int
    pad_left: int
    target: int = 1024

    @property
    def pad_bottom(self) -> int:
        return self.target - self.resized_h - self.pad_top

    @property
    def pad_right(self) -> int:
        return self.target - self.resized_w - self.pad_left

    @classmethod
    def fit(cls, height: int, width: int, target: int = 1024) -> Geometry:
        """Fit (height, width) into target x target keeping the aspect ratio, centred."""
        if height < 1 or width < 1 or target < 1:
            raise ValueError(f"need positive sizes, got {height}x{width} into {target}")
        long_side = max(height, width)

        def fit_side(side: int) -> int:
            # Integer round-half-up of side * target / long_side; the long side lands exactly on target.
            return max(1, (2 * side * target + long_side) // (2 * long_side))

        resized_h, resized_w = fit_side(height), fit_side(width)
        return cls(
            orig_h=height,
            orig_w=width,
            scale=target / long_side,
            resized_h=resized_h,
            resized_w=resized_w,
            pad_top=(target - resized_h) // 2,
            pad_left=(target - resized_w) // 2,
            target=target,
        )


@dataclass(frozen=True)
class PreparedImage:
    png: bytes  # target x target, 3 channels, 8 bit
    geometry: Geometry
    params: dict[str, Any]  # JSON-serialisable provenance of every preprocessing choice


def probe_image(data: bytes, *, max_pixels: int, max_frames: int | None = None) -> ImageInfo:
    """Check an upload without trusting its name: format, size limit, full decode.

    Raises ImageRejected (and nothing else, whatever the bytes) when the upload is not a PNG,
    JPEG or TIFF, declares more than ``max_pixels`` (width x height x frames; checked before
    any pixel is decoded) or more than ``max_frames`` TIFF pages (default: the setting's
    default), has no pixels, or does not decode completely.
    """
    fmt = _sniff(data)
    if fmt == "png":  # the common case, checked without Pillow's much slower decode
        try:
            png = probe_png(data, lambda width, height: _check_declared_png(width, height, max_pixels))
        except PngDamaged:
            raise _corrupt(fmt) from None
        if png is not None:
            return ImageInfo(format=fmt, width=png.width, height=png.height, channels=png.channels,
                             bit_depth=png.bit_depth)
    im, orientation = _open_decoded(data, fmt, max_pixels, max_frames)
    width, height = im.size
    if orientation in (5, 6, 7, 8):  # the four orientations that turn the image by 90 degrees
        width, height = height, width
    return ImageInfo(
        format=fmt, width=width, height=height,
        channels=len(im.getbands()), bit_depth=_bit_depth(im, fmt, data),
    )


def check_headers(data: bytes, *, max_pixels: int, max_frames: int | None = None) -> None:
    """What ``probe_image`` refuses before any pixel is decoded, in memory that does not follow the file.

    For the gateway process, ahead of the full decode elsewhere: the format, the declared size and
    pages, and for a plain PNG its complete check (streamed). A file Pillow cannot even open is left
    to the full decode's verdict.

    Raises:
        ImageRejected: as ``probe_image`` would for these reasons.
    """
    fmt = _sniff(data)
    if fmt == "png":
        try:
            probe_png(data, lambda width, height: _check_declared_png(width, height, max_pixels))
        except PngDamaged:
            raise _corrupt(fmt) from None
        return
    _open_checked(data, fmt, max_pixels, max_frames)  # a file Pillow cannot open: the full decode's verdict


def load_pixels(
    data: bytes, *, max_pixels: int, options: Mapping[str, Any] | None = None, max_frames: int | None = None
) -> np.ndarray:
    """The upload as 8-bit pixels, upright: (H, W) gray or (H, W, 3) RGB, alpha dropped.

    16-bit, 32-bit and float images are normalised with ``PERCENTILES`` (or the job's ``window``)
    as in ``prepare_image``.
    """
    pixels, _ = _load(data, max_pixels, options, max_frames)
    return pixels


def prepare_image(
    data: bytes, *, target: int = 1024, png_compress_level: int = 1, max_pixels: int,
    options: Mapping[str, Any] | None = None, max_frames: int | None = None,
) -> PreparedImage:
    """Decode, normalise to 8 bit, fit into target x target, pad black, encode an RGB PNG.

    ``options`` are the job's (``window``, ``frame``; see medparse.medical); a DICOM upload is read
    by ``medparse.medical.inputs.load_2d``.

    Intensity (only for sources that are not 8 bit, as in the toolkit): clip to the 0.5 and 99.5
    percentiles of all pixels, ``(x - lo) / (hi - lo) * 255``, truncate to uint8. A constant image
    (lo == hi) becomes black. NaN counts as the low bound, +-inf as the nearest bound.
    Geometry: see ``Geometry``. Work runs in the source's channel count and only the padded square
    becomes 3 channels, because resizing RGB costs three times as much as gray.
    PNG: OpenCV at ``png_compress_level`` with the fixed "up" filter. libpng's adaptive filter
    choice costs about 40 % of the encode for about 5 % fewer bytes; Pillow's default level 6
    costs 3-6x level 1 for 15-20 % fewer bytes.
    """
    pixels, source = _load(data, max_pixels, options, max_frames)
    return prepare_pixels(pixels, source, target=target, png_compress_level=png_compress_level)


def prepare_pixels(
    pixels: np.ndarray, source: dict[str, Any], *, target: int = 1024, png_compress_level: int = 1
) -> PreparedImage:
    """``prepare_image`` from 8-bit pixels (H, W) or (H, W, 3): a volume's slices come this way."""
    if not 0 <= png_compress_level <= 9:
        raise ValueError(f"png_compress_level must be 0..9, got {png_compress_level}")
    geometry = Geometry.fit(pixels.shape[0], pixels.shape[1], target)
    if geometry.scale < 1:
        interpolation, flag = "cv2.INTER_AREA", cv2.INTER_AREA  # anti-aliased, the right filter for shrinking
    elif geometry.scale > 1:
        interpolation, flag = "cv2.INTER_CUBIC", cv2.INTER_CUBIC
    else:
        interpolation, flag = "none", -1
    resized = pixels
    if (geometry.resized_h, geometry.resized_w) != pixels.shape[:2]:
        resized = cv2.resize(pixels, (geometry.resized_w, geometry.resized_h), interpolation=flag)
    square = cv2.copyMakeBorder(
        resized, geometry.pad_top, geometry.pad_bottom, geometry.pad_left, geometry.pad_right,
        cv2.BORDER_CONSTANT, value=0,
    )
    # OpenCV writes BGR; gray is simply replicated.
    bgr = cv2.cvtColor(square, cv2.COLOR_GRAY2BGR if square.ndim == 2 else cv2.COLOR_RGB2BGR)
    png, png_filter = _encode_png(bgr, png_compress_level)
    params = {
        "source": source,
        "interpolation": interpolation,
        "scale": geometry.scale,
        "resized": [geometry.resized_h, geometry.resized_w],
        "pad": {
            "top": geometry.pad_top, "bottom": geometry.pad_bottom,
            "left": geometry.pad_left, "right": geometry.pad_right, "value": 0,
        },
        "target": target,
        "png": {"encoder": "opencv", "compress_level": png_compress_level, "filter": png_filter,
                "channels": 3},
    }
    return PreparedImage(png=png, geometry=geometry, params=params)


def _sniff(data: bytes) -> str:
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    raise ImageRejected(
        "unsupported_format",
        "upload a PNG, JPEG, TIFF, DICOM or NIfTI image (the file's content is none of these)",
    )


def _corrupt(fmt: str) -> ImageRejected:
    return ImageRejected("corrupt_image", f"the {fmt.upper()} file is damaged or truncated; export it again")


def _check_size(width: int, height: int, frames: int, max_pixels: int) -> None:
    if width < 1 or height < 1 or frames < 1:
        raise ImageRejected(
            "empty_image", f"the image has no pixels ({width}x{height}); upload a non-empty image"
        )
    if width * height * frames > max_pixels:
        raise ImageRejected(
            "image_too_large",
            f"the image has {width}x{height} pixels" + (f" in {frames} frames" if frames > 1 else "")
            + f"; the limit is {max_pixels} pixels, downscale it first",
        )


def _declares_too_many(max_pixels: int) -> ImageRejected:
    return ImageRejected("image_too_large", f"the image declares too many pixels; the limit is {max_pixels}")


def _check_declared_png(width: int, height: int, max_pixels: int) -> None:
    _check_size(width, height, 1, max_pixels)
    if Image.MAX_IMAGE_PIXELS is not None and width * height > 2 * Image.MAX_IMAGE_PIXELS:
        raise _declares_too_many(max_pixels)  # what Pillow's decompression-bomb guard refuses when decoding


def _open_decoded(
    data: bytes, fmt: str, max_pixels: int, max_frames: int | None = None
) -> tuple[Image.Image, int]:
    """Open as ``fmt`` (``_sniff``'s verdict) only, check the size, decode fully, read the EXIF orientation."""
    im = _open_checked(data, fmt, max_pixels, max_frames)
    if isinstance(im, Exception):
        if _declares_no_pixels(data, fmt):
            _check_size(0, 0, 1, max_pixels)
        raise _corrupt(fmt) from im
    with quiet_warnings():
        try:
            im.seek(0)
            im.load()
        except Exception as exc:
            raise _corrupt(fmt) from exc
        return im, _exif_orientation(im)


def _open_checked(data: bytes, fmt: str, max_pixels: int, max_frames: int | None) -> Image.Image | Exception:
    """Open as ``fmt`` only, nothing decoded, with the TIFF pages and the declared size checked.

    Returns the exception of a file Pillow cannot open (its parsers raise many types on hostile input).
    """
    if fmt == "tiff":
        _check_tiff_pages(data, _default_max_frames() if max_frames is None else max_frames)
    with quiet_warnings():
        try:
            im = Image.open(io.BytesIO(data), formats=[_PILLOW_FORMAT[fmt]])
            width, height = im.size
            frames = int(getattr(im, "n_frames", 1))
        except Image.DecompressionBombError:
            raise _declares_too_many(max_pixels) from None
        except Exception as exc:
            return exc
    _check_size(width, height, frames, max_pixels)
    return im


@contextmanager
def quiet_warnings() -> Iterator[None]:
    """Silence the decoders' warnings (Pillow, pydicom, nibabel) where we want a verdict instead.

    Pillow: DecompressionBombWarning (our own limit is stricter and checked explicitly), corrupt
    EXIF, odd TIFF tags, palette transparency; pydicom: odd-but-readable files (invalid VRs, extra
    bytes). An upload either reads or gets a clear 4xx, so the warnings only add noise (and fail
    strict tests). catch_warnings is process-global state; acceptable, as it only silences meanwhile.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _default_max_frames() -> int:
    from medparse.settings import Settings  # the default only: the environment is read by the entry points

    return int(Settings.model_fields["max_image_frames"].default)


def _check_tiff_pages(data: bytes, max_frames: int) -> None:
    """Refuse a TIFF with more than ``max_frames`` pages before Pillow counts them.

    Pillow's ``n_frames`` walks every page with a check that is quadratic in their number (20,000
    one-pixel pages, 2 MB, take 10 s); here the chain of page directories is followed only as far as
    the limit. A broken or looping chain ends the count: Pillow then decides what it makes of it.
    """
    order = "<" if data[:2] == b"II" else ">"
    try:
        big = struct.unpack_from(order + "H", data, 2)[0] == 43
        count_fmt, entry_size, link_fmt = ("Q", 20, "Q") if big else ("H", 12, "I")
        offset = struct.unpack_from(order + link_fmt, data, 8 if big else 4)[0]
        seen: set[int] = set()
        while offset and offset not in seen:
            seen.add(offset)
            if len(seen) > max_frames:
                raise ImageRejected(
                    "image_too_large",
                    f"the TIFF has more than {max_frames} pages (max_image_frames); upload one page",
                )
            entries = struct.unpack_from(order + count_fmt, data, offset)[0]
            offset = struct.unpack_from(order + link_fmt, data, offset + struct.calcsize(count_fmt)
                                        + entries * entry_size)[0]
    except struct.error:
        return


def _declares_no_pixels(data: bytes, fmt: str) -> bool:
    """True if a PNG or JPEG header declares a zero width or height (Pillow refuses to open those)."""
    if fmt == "png":
        return data[12:16] == b"IHDR" and (data[16:20] == b"\0" * 4 or data[20:24] == b"\0" * 4)
    if fmt != "jpeg":
        return False
    pos = 2
    while pos + 9 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF or 0xD0 <= marker <= 0xD8 or marker == 0x01:  # fill byte, markers without length
            pos += 1 if marker == 0xFF else 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start-of-frame segment
            return data[pos + 5:pos + 7] == b"\0\0" or data[pos + 7:pos + 9] == b"\0\0"
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return False


def _exif_orientation(im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # unreadable EXIF: the pixels are fine, show them as stored
        return 1
    return value if 1 <= value <= 8 else 1


def _bit_depth(im: Image.Image, fmt: str, data: bytes) -> int:
    if fmt == "png" and len(data) > 24:
        return data[24]  # IHDR bit depth; Pillow reads 16-bit RGB PNGs as 8-bit "RGB"
    if fmt == "tiff":
        bits = getattr(im, "tag_v2", {}).get(258)  # BitsPerSample
        if isinstance(bits, tuple) and bits and isinstance(bits[0], int):
            return bits[0]
        if isinstance(bits, int):
            return bits
    return _BITS.get(im.mode, 8)


def _load(
    data: bytes, max_pixels: int, options: Mapping[str, Any] | None = None, max_frames: int | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode to upright 8-bit pixels (H, W) or (H, W, 3), and describe what was done."""
    if sniff_medical(data) == "dicom":
        from medparse.medical.inputs import load_2d  # imports this module

        return load_2d(data, options, max_pixels)
    fmt = _sniff(data)
    im, orientation = _open_decoded(data, fmt, max_pixels, max_frames)
    mode = im.mode
    try:
        with quiet_warnings():
            if mode in _NATIVE_MODES:
                raw = np.asarray(im)
            elif mode in _GRAY_MODES:
                raw = np.asarray(im.convert("L"))
            else:  # P, PA, RGBA, RGBX, CMYK, YCbCr, ...: alpha dropped, as in the samples
                raw = np.asarray(im.convert("RGB"))
    except Exception as exc:
        raise ImageRejected(
            "unsupported_format", f"pixel format {mode!r} is not supported; save the image as 8 or 16 bit"
        ) from exc
    pixels, normalization = _to_uint8(raw, (options or {}).get("window"))
    pixels = _orient(pixels, orientation)
    source = {"format": fmt, "mode": mode, "exif_orientation": orientation, "normalization": normalization}
    return pixels, source


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation the way ImageOps.exif_transpose does, on the array."""
    if orientation in (5, 6, 7, 8):
        pixels = pixels.swapaxes(0, 1)  # transpose; the flips below complete the rotation
    flip_rows = orientation in (3, 4, 7, 8)
    flip_cols = orientation in (2, 3, 6, 7)
    if flip_rows:
        pixels = pixels[::-1]
    if flip_cols:
        pixels = pixels[:, ::-1]
    return np.ascontiguousarray(pixels) if orientation != 1 else pixels


def _to_uint8(raw: np.ndarray, window: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
    if window is not None:  # a CT preset or {center, width}: medparse.medical.windowing
        from medparse.medical.windowing import to_uint8

        return to_uint8(raw, window)
    if raw.dtype == np.uint8:
        return raw, {"method": "none"}
    if raw.ndim != 2:
        raise ImageRejected("unsupported_format", "multi-channel images must be 8 bit; convert to 8-bit RGB")
    if raw.dtype.kind in "ui" and raw.size and 0 <= int(raw.min()) and int(raw.max()) <= 0xFFFF:
        values = raw.astype(np.uint16, copy=False)
        lo, hi = _u16_percentiles(values, PERCENTILES)
        out = np.take(_scale_lut(lo, hi), values)
    else:
        # Hostile floats (signalling NaNs, ranges near the float64 limit) would only warn; they end up clamped.
        with np.errstate(all="ignore"):
            out, lo, hi = _scale_float(raw.astype(np.float64))
    info = {
        "method": "percentile", "percentiles": list(PERCENTILES), "low": lo, "high": hi,
        "source_dtype": str(raw.dtype), "rounding": "truncate",
    }
    return out, info


def _u16_percentiles(values: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """np.percentile(values, qs) ("linear" method), exactly, from a histogram instead of a sort."""
    flat = values.reshape(-1)
    hist = np.zeros(0x10000, np.int64)
    chunk = 1 << 22  # bincount widens to intp: bound its temporary to 32 MB
    for start in range(0, flat.size, chunk):
        hist += np.bincount(flat[start:start + chunk], minlength=0x10000)
    cumulative = np.cumsum(hist)
    n = flat.size
    result = []
    for q in qs:
        quantile = q / 100
        virtual = (n - 1) * quantile  # numpy's "linear" virtual index
        below = math.floor(virtual)
        gamma = virtual - below
        a = float(np.searchsorted(cumulative, min(below, n - 1), side="right"))
        b = float(np.searchsorted(cumulative, min(below + 1, n - 1), side="right"))
        # numpy's _lerp, including its switch for gamma >= 0.5, so the bounds match bit for bit
        result.append(b - (b - a) * (1 - gamma) if gamma >= 0.5 else a + (b - a) * gamma)
    return result


def _scale_lut(lo: float, hi: float) -> np.ndarray:
    """The toolkit's clip-and-scale for every uint16 value, so applying it is one table lookup."""
    values = np.arange(0x10000, dtype=np.float64)
    if hi <= lo:
        return np.zeros(0x10000, np.uint8)
    return ((np.clip(values, lo, hi) - lo) / (hi - lo) * 255.0).astype(np.uint8)


def _scale_float(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    finite = np.isfinite(values)
    all_finite = bool(finite.all())
    if not all_finite and not finite.any():
        raise ImageRejected("corrupt_image", "the image has no finite pixel values")
    lo, hi = (float(v) for v in np.percentile(values if all_finite else values[finite], PERCENTILES))
    if not all_finite:
        values = np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo)
    if hi <= lo:
        return np.zeros(values.shape, np.uint8), lo, hi
    np.clip(values, lo, hi, out=values)
    values -= lo
    values /= hi - lo
    values *= 255.0
    return values.astype(np.uint8), lo, hi


def _encode_png(bgr: np.ndarray, level: int) -> tuple[bytes, str]:
    params = [cv2.IMWRITE_PNG_COMPRESSION, level]
    png_filter = "adaptive"
    if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.11
        params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
        png_filter = "up"
    ok, buf = cv2.imencode(".png", bgr, params)
    if not ok:
        raise RuntimeError("OpenCV failed to encode the PNG")
    return buf.tobytes(), png_filter
