"""The gateway's fast PNG check: libpng's verdict (decodes or not) and Pillow's header facts.

Pillow forgives some damage libpng refuses (rows missing at the end, a cut IDAT CRC): it fills the
rest with black. The check follows libpng (read through OpenCV here): such a file is truncated.
"""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from medparse import imaging
from medparse.png_probe import PngDamaged, probe_png


def _png(mode: str, size: tuple[int, int] = (37, 23)) -> bytes:
    rng = np.random.default_rng(3)
    w, h = size
    if mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
    elif mode == "1":
        im = Image.fromarray(rng.integers(0, 2, (h, w), dtype=np.uint8) * 255).convert("1")
    else:
        bands = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "P": 3}[mode]
        arr = rng.integers(0, 256, (h, w, bands), dtype=np.uint8)
        im = Image.fromarray(arr[:, :, 0] if bands == 1 else arr, "L" if bands == 1 else None)
        if mode == "LA":
            im = Image.fromarray(arr, "LA")
        if mode == "P":
            im = im.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()

def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(kind)))

def _gray_png(width: int, height: int, rows: bytes, *, interlace: int = 0, color_type: int = 0) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, interlace)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")

def _libpng_decodes(data: bytes) -> bool:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) is not None

def _no_limit(width: int, height: int) -> None:
    return None

@pytest.mark.parametrize("mode", ["L", "I;16", "RGB", "RGBA", "LA", "P", "1"])
def test_valid_pngs_match_pillows_header(mode: str) -> None:
    data = _png(mode)
    header = probe_png(data, _no_limit)
    assert header is not None
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        assert (header.width, header.height) == im.size
        assert header.channels == len(im.getbands())
    assert header.bit_depth == data[24]

@pytest.mark.parametrize("mode", ["L", "RGB", "P"])
def test_truncated_files_are_damaged_for_both(mode: str) -> None:
    data = _png(mode)
    for cut in (20, 40, len(data) // 2, len(data) - 13, len(data) - 1):
        assert not _libpng_decodes(data[:cut])
        with pytest.raises(PngDamaged):
            probe_png(data[:cut], _no_limit)

def test_rows_missing_from_the_stream_are_damaged_for_both() -> None:
    short = _gray_png(10, 10, b"\0" * 11 * 9)  # 9 of 10 rows
    assert not _libpng_decodes(short)
    with pytest.raises(PngDamaged, match="ends after"):
        probe_png(short, _no_limit)

def test_a_bad_filter_type_is_damaged_for_both() -> None:
    rows = bytearray(b"\0" * 11 * 10)
    rows[11 * 4] = 9  # row 4: filter type 9 does not exist
    bad = _gray_png(10, 10, bytes(rows))
    assert not _libpng_decodes(bad)
    with pytest.raises(PngDamaged, match="filter"):
        probe_png(bad, _no_limit)
    assert probe_png(_gray_png(10, 10, b"\x04" * 11 * 10), _no_limit) is not None  # Paeth everywhere is fine

def test_garbage_image_data_with_a_right_crc_is_damaged_for_both() -> None:
    ihdr = struct.pack(">IIBBBBB", 10, 10, 8, 0, 0, 0, 0)
    bad = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"not zlib at all") + _chunk(b"IEND", b"")
    assert not _libpng_decodes(bad)
    with pytest.raises(PngDamaged, match="inflate"):
        probe_png(bad, _no_limit)

def test_a_flipped_byte_breaks_the_crc() -> None:
    data = bytearray(_png("L"))
    data[60] ^= 0x40
    with pytest.raises(PngDamaged, match="CRC"):
        probe_png(bytes(data), _no_limit)

def test_size_is_checked_before_anything_is_inflated() -> None:
    # 100000 x 100000 declared, a few bytes of data: refused by the limit, not by the missing rows.
    huge = _gray_png(100_000, 100_000, b"\0" * 10)
    with pytest.raises(imaging.ImageRejected) as refused:
        imaging.probe_image(huge, max_pixels=1_000_000)
    assert refused.value.code == "image_too_large"
    with pytest.raises(imaging.ImageRejected) as empty:
        imaging.probe_image(_gray_png(0, 5, b""), max_pixels=1_000_000)
    assert empty.value.code == "empty_image"

def test_interlaced_and_exif_files_go_to_pillow() -> None:
    assert probe_png(_gray_png(4, 4, b"\0" * 20, interlace=1), _no_limit) is None
    data = _png("L")
    exif = Image.Exif()
    exif[0x0112] = 6
    with_exif = data[:33] + _chunk(b"eXIf", exif.tobytes()) + data[33:]
    assert probe_png(with_exif, _no_limit) is None
    info = imaging.probe_image(with_exif, max_pixels=10_000_000)
    assert (info.width, info.height) == (23, 37)  # orientation 6 turns the 37 x 23 image

def test_a_palette_image_needs_its_palette() -> None:
    no_palette = _gray_png(4, 4, b"\0" * 20, color_type=3)
    with pytest.raises(PngDamaged, match="PLTE"):
        probe_png(no_palette, _no_limit)
    with pytest.raises(imaging.ImageRejected) as refused:
        imaging.probe_image(no_palette, max_pixels=1_000_000)
    assert refused.value.code == "corrupt_image"

def test_probe_image_answers_as_the_pillow_path_did() -> None:
    for mode in ("L", "I;16", "RGB", "RGBA", "P"):
        data = _png(mode, (64, 48))
        fast = imaging.probe_image(data, max_pixels=10_000_000)
        im, _ = imaging._open_decoded(data, "png", 10_000_000)
        assert (fast.format, fast.width, fast.height, fast.channels) == ("png", *im.size, len(im.getbands()))
