from __future__ import annotations

import io
import json
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps
from skimage import transform

from medparse.imaging import (
    Geometry,
    ImageInfo,
    ImageRejected,
    _u16_percentiles,
    load_pixels,
    prepare_image,
    probe_image,
)

MAX = 40_000_000


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_of(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)  # writes 16-bit PNGs too
    assert ok
    return buf.tobytes()


def decode_png_rgb(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.mode == "RGB"
    return np.asarray(image)


def gradient(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return ((x * 7 + y * 3) % 251).astype(np.uint8)


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_declaring(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG header that declares any size, with almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b"")
    )


def toolkit_normalise(values: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(values, 0.5), np.percentile(values, 99.5)
    return ((np.clip(values, lo, hi) - lo) / (hi - lo) * 255.0).astype(np.uint8)


# --- probe_image ----------------------------------------------------------------------------------

def test_probe_reports_format_size_channels_and_depth_from_content() -> None:
    assert probe_image(png_of(gradient(30, 50)), max_pixels=MAX) == ImageInfo("png", 50, 30, 1, 8)
    sixteen = png_of(gradient(30, 50).astype(np.uint16) * 200)
    assert probe_image(sixteen, max_pixels=MAX) == ImageInfo("png", 50, 30, 1, 16)
    rgb = Image.fromarray(np.dstack([gradient(20, 40)] * 3))
    assert probe_image(encode(rgb, "JPEG"), max_pixels=MAX) == ImageInfo("jpeg", 40, 20, 3, 8)
    assert probe_image(encode(rgb.convert("RGBA")), max_pixels=MAX) == ImageInfo("png", 40, 20, 4, 8)
    floats = Image.fromarray(np.linspace(-1, 1, 600, dtype=np.float32).reshape(20, 30))
    assert probe_image(encode(floats, "TIFF"), max_pixels=MAX) == ImageInfo("tiff", 30, 20, 1, 32)


@pytest.mark.parametrize("data", [
    b"", b"hello", b"GIF89a" + b"\x00" * 40, encode(Image.new("RGB", (4, 4)), "BMP"),
    encode(Image.new("RGB", (4, 4)), "WEBP"), b"\x00\x89PNG\r\n\x1a\n",
])
def test_probe_rejects_other_formats_by_content(data: bytes) -> None:
    with pytest.raises(ImageRejected) as info:
        probe_image(data, max_pixels=MAX)
    assert info.value.code == "unsupported_format"
    assert "PNG" in info.value.message


def test_probe_rejects_truncated_and_damaged_files_as_corrupt() -> None:
    png = png_of(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    jpeg = encode(Image.fromarray(gradient(64, 64)), "JPEG")
    for data in (png[: len(png) // 2], jpeg[: len(jpeg) // 2], png[:40], b"\xff\xd8\xff" + b"\x00" * 100,
                 b"II*\x00" + b"\xff" * 50, b"\x89PNG\r\n\x1a\n" + b"\x00" * 30):
        with pytest.raises(ImageRejected) as info:
            probe_image(data, max_pixels=MAX)
        assert info.value.code == "corrupt_image", data[:12]


@pytest.mark.parametrize("max_pixels", [MAX, 10**12])
def test_probe_refuses_a_huge_declared_size_before_decoding(max_pixels: int) -> None:
    # 10**10 pixels declared in ~100 bytes; beyond our limit or, with a huge limit, Pillow's bomb guard.
    with pytest.raises(ImageRejected) as info:
        probe_image(png_declaring(100_000, 100_000), max_pixels=max_pixels)
    assert info.value.code == "image_too_large"


def test_probe_applies_the_pixel_limit_to_width_times_height_times_frames() -> None:
    with pytest.raises(ImageRejected) as info:
        probe_image(png_of(gradient(100, 100)), max_pixels=9_999)
    assert info.value.code == "image_too_large"
    frames = [Image.fromarray(gradient(100, 100)) for _ in range(3)]
    tiff = encode(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    assert probe_image(tiff, max_pixels=30_000).width == 100
    with pytest.raises(ImageRejected, match="frames"):
        probe_image(tiff, max_pixels=29_999)


def test_probe_rejects_images_without_pixels() -> None:
    jpeg = bytearray(encode(Image.fromarray(gradient(16, 16)), "JPEG"))
    frame = jpeg.find(b"\xff\xc0")
    jpeg[frame + 5:frame + 7] = b"\0\0"  # start-of-frame height
    for data in (png_declaring(0, 10), png_declaring(10, 0), bytes(jpeg)):
        with pytest.raises(ImageRejected) as info:
            probe_image(data, max_pixels=MAX)
        assert info.value.code == "empty_image"


def test_probe_never_raises_anything_but_image_rejected() -> None:
    rng = np.random.default_rng(42)
    seeds = [
        png_of(rng.integers(0, 255, (40, 30), dtype=np.uint8)),
        png_of(rng.integers(0, 4000, (20, 30), dtype=np.uint16)),
        encode(Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)), "JPEG"),
        encode(Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)), "TIFF"),
        encode(Image.fromarray(rng.integers(0, 255, (40, 30), dtype=np.uint8)).convert("P"), "PNG"),
        png_declaring(70_000, 3),
    ]
    outcomes = {"ok": 0, "rejected": 0}
    for seed in seeds:
        cuts = sorted(set(rng.integers(1, len(seed), 25).tolist()))
        variants = [seed[:cut] for cut in cuts]
        for _ in range(25):
            mutated = bytearray(seed)
            for pos in rng.integers(8, len(seed), int(rng.integers(1, 6))):
                mutated[pos] = int(rng.integers(0, 256))
            variants.append(bytes(mutated))
        variants.append(seed[:8] + rng.integers(0, 256, 200, dtype=np.uint8).tobytes())
        for data in variants:
            try:
                probe_image(data, max_pixels=MAX)
                outcomes["ok"] += 1
            except ImageRejected as exc:
                assert exc.code in ("unsupported_format", "corrupt_image", "image_too_large", "empty_image")
                outcomes["rejected"] += 1
    assert outcomes["rejected"] > 100


def test_probe_reports_size_after_exif_orientation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    jpeg = encode(Image.fromarray(np.dstack([gradient(20, 40)] * 3)), "JPEG", exif=exif)
    info = probe_image(jpeg, max_pixels=MAX)
    assert (info.width, info.height) == (20, 40)
    assert load_pixels(jpeg, max_pixels=MAX).shape == (40, 20, 3)
    assert prepare_image(jpeg, max_pixels=MAX).geometry.orig_h == 40


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow_exif_transpose(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    rgb = np.dstack([gradient(5, 8), gradient(5, 8)[::-1], gradient(5, 8)[:, ::-1]])
    data = encode(Image.fromarray(rgb), "PNG", exif=exif)
    reference = Image.open(io.BytesIO(data))
    reference.load()
    assert np.array_equal(load_pixels(data, max_pixels=MAX), np.asarray(ImageOps.exif_transpose(reference)))


# --- pixel formats ---------------------------------------------------------------------------------

def test_sixteen_bit_images_are_normalised_like_the_toolkit() -> None:
    rng = np.random.default_rng(3)
    raw = (rng.gamma(2.0, 400.0, (97, 131)) + 50).clip(0, 65535).astype(np.uint16)
    expected = toolkit_normalise(raw)
    assert np.array_equal(load_pixels(png_of(raw), max_pixels=MAX), expected)
    assert np.array_equal(load_pixels(encode(Image.fromarray(raw), "TIFF"), max_pixels=MAX), expected)
    prepared = prepare_image(png_of(raw), max_pixels=MAX)
    normalization = prepared.params["source"]["normalization"]
    assert normalization["method"] == "percentile"
    assert normalization["low"] == pytest.approx(np.percentile(raw, 0.5))


@pytest.mark.parametrize("size", [1, 2, 3, 10, 201, 10_007])
def test_histogram_percentiles_equal_numpy_exactly(size: int) -> None:
    rng = np.random.default_rng(size)
    for values in (rng.integers(0, 65536, size), rng.integers(1000, 1010, size), np.full(size, 7)):
        values = values.astype(np.uint16)
        assert _u16_percentiles(values, (0.5, 99.5, 50.0)) == list(np.percentile(values, [0.5, 99.5, 50.0]))


def test_float_tiff_is_normalised_and_non_finite_values_are_clamped() -> None:
    rng = np.random.default_rng(4)
    raw = rng.normal(0.0, 3.0, (40, 60)).astype(np.float32)
    data = encode(Image.fromarray(raw), "TIFF")
    assert np.array_equal(load_pixels(data, max_pixels=MAX), toolkit_normalise(raw.astype(np.float64)))
    raw[0, :3] = [np.nan, np.inf, -np.inf]
    pixels = load_pixels(encode(Image.fromarray(raw), "TIFF"), max_pixels=MAX)
    assert pixels[0, :3].tolist() == [0, 255, 0]


def test_constant_sixteen_bit_image_becomes_black() -> None:
    raw = np.full((16, 16), 1234, np.uint16)
    assert not load_pixels(png_of(raw), max_pixels=MAX).any()


def test_rgba_drops_alpha_and_palette_and_gray_alpha_expand() -> None:
    rgb = np.dstack([gradient(12, 9), gradient(12, 9)[::-1], np.full((12, 9), 77, np.uint8)])
    rgba = np.dstack([rgb, np.arange(108, dtype=np.uint8).reshape(12, 9)])
    assert np.array_equal(load_pixels(encode(Image.fromarray(rgba)), max_pixels=MAX), rgb)
    palette = Image.fromarray(rgb).quantize(16)
    assert np.array_equal(load_pixels(encode(palette), max_pixels=MAX), np.asarray(palette.convert("RGB")))
    transparent = encode(palette, transparency=bytes([0] * 8))  # Pillow warns when converting these
    assert np.array_equal(load_pixels(transparent, max_pixels=MAX), np.asarray(palette.convert("RGB")))
    gray_alpha = Image.fromarray(np.dstack([gradient(12, 9), gradient(12, 9)]), "LA")
    assert np.array_equal(load_pixels(encode(gray_alpha), max_pixels=MAX), gradient(12, 9))
    assert load_pixels(encode(Image.new("1", (5, 4), 1)), max_pixels=MAX).tolist() == [[255] * 5] * 4


# --- geometry and prepare_image ------------------------------------------------------------------

@pytest.mark.parametrize(("height", "width", "resized", "pads"), [
    (512, 512, (1024, 1024), (0, 0, 0, 0)),
    (1536, 2048, (768, 1024), (128, 128, 0, 0)),
    (7, 3, (1024, 439), (0, 0, 292, 293)),
    (1, 5000, (1, 1024), (511, 512, 0, 0)),
])
def test_geometry_fits_the_long_side_and_puts_the_odd_pad_pixel_last(
    height: int, width: int, resized: tuple[int, int], pads: tuple[int, int, int, int]
) -> None:
    geometry = Geometry.fit(height, width, 1024)
    assert (geometry.resized_h, geometry.resized_w) == resized
    assert (geometry.pad_top, geometry.pad_bottom, geometry.pad_left, geometry.pad_right) == pads
    assert geometry.scale == 1024 / max(height, width)


def test_prepare_image_places_the_image_in_a_black_padded_rgb_square() -> None:
    image = np.full((301, 200), 200, np.uint8)
    prepared = prepare_image(png_of(image), max_pixels=MAX)
    g = prepared.geometry
    assert (g.orig_h, g.orig_w, g.resized_h, g.resized_w) == (301, 200, 1024, 680)
    assert (g.pad_left, g.pad_right) == (172, 172)
    pixels = decode_png_rgb(prepared.png)
    assert pixels.shape == (1024, 1024, 3)
    assert not pixels[:, : g.pad_left].any() and not pixels[:, g.pad_left + g.resized_w:].any()
    assert (pixels[:, g.pad_left: g.pad_left + g.resized_w] == 200).all()
    assert prepared.params["interpolation"] == "cv2.INTER_CUBIC"
    json.dumps(prepared.params)  # provenance must be storable as JSON


def test_prepare_image_keeps_colour_order_and_shrinks_with_area() -> None:
    rgb = np.zeros((2000, 1000, 3), np.uint8)
    rgb[..., 0] = 250  # pure red
    prepared = prepare_image(encode(Image.fromarray(rgb)), max_pixels=MAX, target=500)
    pixels = decode_png_rgb(prepared.png)
    assert pixels.shape == (500, 500, 3)
    assert pixels[250, 250].tolist() == [250, 0, 0]
    assert prepared.params["interpolation"] == "cv2.INTER_AREA"
    assert prepared.geometry.target == 500


def test_prepare_image_png_level_is_respected_and_validated() -> None:
    data = png_of(gradient(256, 256))
    assert len(prepare_image(data, max_pixels=MAX, png_compress_level=0).png) > 3_000_000
    assert len(prepare_image(data, max_pixels=MAX).png) < 1_000_000
    with pytest.raises(ValueError):
        prepare_image(data, max_pixels=MAX, png_compress_level=10)


def test_prepare_image_stays_close_to_the_samples_preprocessing() -> None:
    rng = np.random.default_rng(5)
    smooth = cv2.GaussianBlur(rng.uniform(0, 255, (300, 400)).astype(np.float32), (0, 0), 4)
    image = np.clip((smooth - smooth.min()) * 4, 0, 255).astype(np.uint8)
    ours = decode_png_rgb(prepare_image(png_of(image), max_pixels=MAX).png)[..., 0].astype(np.float64)
    padded = np.pad(image, ((50, 50), (0, 0)))  # the samples: abs(H-W)//2 on both sides, then resize
    samples = transform.resize(padded, (1024, 1024), order=3, mode="constant", preserve_range=True,
                               anti_aliasing=True)
    assert np.abs(ours - np.clip(samples, 0, 255).astype(np.uint8)).mean() < 2.0


def test_prepare_image_rejects_like_probe() -> None:
    with pytest.raises(ImageRejected) as info:
        prepare_image(png_declaring(100_000, 100_000), max_pixels=MAX)
    assert info.value.code == "image_too_large"
