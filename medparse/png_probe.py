"""A fast, complete validity check of a PNG upload for the gateway's accept path.

Pillow's decode of a 40 kB PNG costs about 0.45 ms, a third of the gateway's CPU per submission:
its zlib decoder inflates one row at a time and then unfilters every row. Whether a PNG *decodes*
depends on less: every chunk's CRC, a well-formed header, a zlib stream that inflates to at least
the rows the header promises, and a valid filter type (0-4) at the start of every row (unfiltering
itself cannot fail). ``probe_png`` checks exactly that, inflating with ISA-L (python-isal, ~3x
faster than zlib here) in one call: about 0.1 ms for the same file.

It answers only for the plain case: non-interlaced, without an ``eXIf`` chunk (whose orientation
may swap width and height). Anything else returns None and takes Pillow's path (imaging.probe_image).
tests/unit/test_png_probe.py holds its verdicts against libpng's (and its header facts against
Pillow's) on valid and damaged files.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from typing import NamedTuple, cast

from isal import isal_zlib

#: colour type -> (channels as Pillow reports its bands, allowed bit depths)
_COLOR_TYPES: dict[int, tuple[int, frozenset[int]]] = {
    0: (1, frozenset({1, 2, 4, 8, 16})),  # gray
    2: (3, frozenset({8, 16})),  # RGB
    3: (1, frozenset({1, 2, 4, 8})),  # palette
    4: (2, frozenset({8, 16})),  # gray + alpha
    6: (4, frozenset({8, 16})),  # RGBA
}
_HEADER = struct.Struct(">IIBBBBB")
_MAX_CHUNK = 2**31 - 1
_FILTER_TYPES = bytes(range(5))
#: python-isal's stubs declare its error class as an instance
_INFLATE_ERROR = cast(type[Exception], isal_zlib.error)


class PngHeader(NamedTuple):
    width: int
    height: int
    bit_depth: int
    channels: int


class PngDamaged(Exception):
    """The file is not a PNG that decodes (the message says why, for logs; users get a generic one)."""


def probe_png(data: bytes, check_size: Callable[[int, int], None]) -> PngHeader | None:
    """The PNG's header once it is known to decode completely; None if Pillow must decide.

    ``check_size(width, height)`` is called before anything is inflated (it raises to refuse).
    Raises PngDamaged when the file would not decode.
    """
    header: PngHeader | None = None
    interlaced = seen_palette = False
    idat: list[memoryview] = []
    for kind, body in _chunks(data):
        if header is None:
            if kind != b"IHDR" or len(body) != 13:
                raise PngDamaged("the first chunk is not IHDR")
            header, interlaced = _parse_header(bytes(body))
            check_size(header.width, header.height)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"PLTE":
            seen_palette = True
        elif kind == b"eXIf":
            return None
    if header is None or not idat:
        raise PngDamaged("no image data")
    if interlaced:
        return None
    if data[25] == 3 and not seen_palette:  # IHDR colour type 3: palette
        raise PngDamaged("palette image without PLTE")
    _check_pixels(b"".join(idat), header)
    return header


def _chunks(data: bytes) -> Iterator[tuple[bytes, memoryview]]:
    """(type, body) of every chunk up to IEND, each with its CRC checked."""
    view = memoryview(data)
    pos, end = 8, len(data)
    while True:
        if pos + 12 > end:
            raise PngDamaged("truncated before IEND")
        length = int.from_bytes(view[pos:pos + 4], "big")
        kind = bytes(view[pos + 4:pos + 8])
        if length > _MAX_CHUNK or pos + 12 + length > end:
            raise PngDamaged(f"chunk {kind!r} runs past the end of the file")
        body = view[pos + 8:pos + 8 + length]
        if zlib.crc32(body, zlib.crc32(kind)) != int.from_bytes(view[pos + 8 + length:pos + 12 + length], "big"):
            raise PngDamaged(f"CRC mismatch in chunk {kind!r}")
        if kind == b"IEND":
            return
        yield kind, body
        pos += 12 + length


def _parse_header(body: bytes) -> tuple[PngHeader, bool]:
    width, height, bit_depth, color_type, compression, filter_method, interlace = _HEADER.unpack(body)
    if color_type not in _COLOR_TYPES or bit_depth not in _COLOR_TYPES[color_type][1]:
        raise PngDamaged(f"invalid colour type {color_type} with bit depth {bit_depth}")
    if compression != 0 or filter_method != 0 or interlace not in (0, 1):
        raise PngDamaged("unknown compression, filter or interlace method")
    if width > _MAX_CHUNK or height > _MAX_CHUNK:
        raise PngDamaged("dimensions beyond the PNG limit")
    return PngHeader(width, height, bit_depth, _COLOR_TYPES[color_type][0]), interlace == 1


def _check_pixels(compressed: bytes, header: PngHeader) -> None:
    row_bytes = (header.width * header.channels * header.bit_depth + 7) // 8  # a palette index is 1 sample
    stride = 1 + row_bytes
    expected = header.height * stride
    try:
        # max_length bounds the work: a stream inflating far beyond its rows is cut off, not followed.
        raw = isal_zlib.decompressobj().decompress(compressed, expected)
    except _INFLATE_ERROR as exc:
        raise PngDamaged(f"image data does not inflate: {exc}") from None
    if len(raw) < expected:
        raise PngDamaged(f"image data ends after {len(raw)} of {expected} bytes")
    if raw[::stride].translate(None, _FILTER_TYPES):  # anything left is not a filter type
        raise PngDamaged("invalid row filter type")
