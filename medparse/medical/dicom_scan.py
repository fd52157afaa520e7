"""A DICOM upload's structure, walked from its raw bytes before pydicom builds anything of it.

pydicom makes a Python object of every element and sequence item it reads (300-700 bytes each: 8 MB
of empty items cost 650 MB and 15 s), recurses once per nesting level, and inflates a deflated dataset
whole inside ``dcmread`` (a 1 MiB upload can declare 1 GiB). So the file meta, the inflated size of a
deflated dataset, the number of elements and items, the nesting depth and the Pixel Data element
(its length, or its fragments) are read here first, in memory independent of what the file declares:
the deflated stream is inflated chunk by chunk and counted before it is kept, and nothing is built
per element. Only a file within every limit is handed to pydicom (``dicom.open_dicom``).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.uid import UID

from medparse.imaging import ImageRejected

#: Explicit VRs whose length is a 4-byte field after two reserved bytes (PS3.5 7.1.2).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
#: Top-level image attributes kept raw by the walk, so that the declared size is checked without pydicom:
#: SamplesPerPixel, PhotometricInterpretation, NumberOfFrames, Rows, Columns, BitsAllocated, BitsStored,
#: PixelRepresentation.
IMAGE_ATTRIBUTES = frozenset({0x00280002, 0x00280004, 0x00280008, 0x00280010, 0x00280011, 0x00280100,
                              0x00280101, 0x00280103})
_META_START = 132
#: Output per inflate call while counting: memory while checking a deflated dataset, whatever it declares.
_INFLATE_CHUNK = 1 << 20


@dataclass(frozen=True)
class DicomLimits:
    """The structure limits of a DICOM upload (settings ``max_dicom_*``)."""

    #: bytes a deflated dataset may inflate to
    max_inflated_bytes: int
    #: data elements, sequence items and Pixel Data fragments, all levels together
    max_elements: int
    #: sequences within sequences
    max_depth: int
    #: NumberOfFrames (checked by ``dicom.open_dicom``)
    max_frames: int

    @classmethod
    def from_settings(cls, settings: Any) -> DicomLimits:
        return cls(
            max_inflated_bytes=settings.max_dicom_inflated_bytes, max_elements=settings.max_dicom_elements,
            max_depth=settings.max_dicom_depth, max_frames=settings.max_dicom_frames,
        )

    @classmethod
    def defaults(cls) -> DicomLimits:
        """The settings' defaults, for callers that do not pass theirs (the environment is not read)."""
        from medparse.settings import Settings

        fields = Settings.model_fields
        return cls(
            max_inflated_bytes=fields["max_dicom_inflated_bytes"].default,
            max_elements=fields["max_dicom_elements"].default,
            max_depth=fields["max_dicom_depth"].default, max_frames=fields["max_dicom_frames"].default,
        )


@dataclass(frozen=True)
class Layout:
    """What the walk found; ``inflated`` is the dataset for pydicom when the file is deflated."""

    transfer_syntax: str
    #: offset of the dataset (after the file meta) in the upload
    dataset_offset: int
    inflated: bytes | None
    #: False for a deflated dataset only counted (``scan(inflate=False)``): nothing below was read
    walked: bool
    explicit_vr: bool
    little_endian: bool
    #: the raw top-level elements of IMAGE_ATTRIBUTES (header and value), in file order
    image_attributes: bytes
    elements: int
    #: the top-level Pixel Data's defined length; None when it is encapsulated (or absent)
    pixel_length: int | None
    #: encapsulated Pixel Data: its fragments (items after the Basic Offset Table)
    fragments: int | None


def corrupt(detail: str) -> ImageRejected:
    return ImageRejected("corrupt_image", f"the DICOM file is damaged or truncated ({detail}); export it again")


def scan(data: bytes, limits: DicomLimits, *, inflate: bool = True) -> Layout:
    """Walk the upload (already known to have DICM at 128).

    ``inflate`` False: a deflated dataset is only counted against ``max_inflated_bytes`` (nothing kept,
    nothing walked); what the gateway checks before handing the file to a decode process.

    Raises:
        ImageRejected: ``image_too_large`` for a deflated dataset above ``max_inflated_bytes``;
            ``corrupt_image`` for a structure that is broken, too many elements or too deep.
    """
    view = memoryview(data)
    meta = _Walker(view, explicit=True, little=True, limits=limits)
    syntax_value, offset = meta.file_meta(_META_START)
    syntax = syntax_value.rstrip(b"\0 ").decode("ascii", "replace")
    explicit, little, deflated = _encoding(syntax)
    inflated = None
    body = view[offset:]
    if deflated:
        inflated = inflate_dataset(body, limits.max_inflated_bytes, keep=inflate)
        if inflated is None:
            return Layout(syntax, offset, None, False, explicit, little, b"", meta.count, None, None)
        body = memoryview(inflated)
    walker = _Walker(body, explicit=explicit, little=little, limits=limits, counted=meta.count)
    walker.dataset(0, len(body), 0)
    return Layout(
        transfer_syntax=syntax, dataset_offset=offset, inflated=inflated, walked=True, explicit_vr=explicit,
        little_endian=little, image_attributes=b"".join(walker.attributes), elements=walker.count,
        pixel_length=walker.pixel_length, fragments=walker.fragments,
    )


def _encoding(syntax: str) -> tuple[bool, bool, bool]:
    """(explicit VR, little endian, deflated) as pydicom reads the syntax: unknown ones as explicit little endian."""
    uid = UID(syntax)
    try:
        return not uid.is_implicit_VR, uid.is_little_endian, uid.is_deflated
    except ValueError:  # not a transfer syntax UID: pydicom reads on as explicit VR little endian
        return True, True, False


def inflate_dataset(stream: memoryview, cap: int, *, keep: bool = True) -> bytes | None:
    """The raw-deflate ``stream`` inflated, if it inflates completely to at most ``cap`` bytes.

    Counted first, chunk by chunk, keeping nothing: a bomb is refused in about ``_INFLATE_CHUNK`` of memory;
    only a stream known to fit is inflated again, into one buffer of its size.
    """
    size = 0
    counter = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        for start in range(0, len(stream), _INFLATE_CHUNK):
            pending: bytes | memoryview = stream[start:start + _INFLATE_CHUNK]
            while pending and not counter.eof:
                size += len(counter.decompress(pending, _INFLATE_CHUNK))
                if size > cap:
                    raise ImageRejected(
                        "image_too_large",
                        f"the deflated DICOM dataset inflates to more than {cap} bytes (max_dicom_inflated_bytes); "
                        "export it uncompressed or with a smaller image",
                    )
                pending = counter.unconsumed_tail
            if counter.eof:
                break
    except zlib.error as exc:
        raise corrupt(f"deflate: {' '.join(str(exc).split())[:80]}") from None
    if not counter.eof:
        raise corrupt("the deflated dataset ends before its stream does")
    return zlib.decompressobj(-zlib.MAX_WBITS).decompress(stream, size) if keep else None


class _Walker:
    """Element by element over one encoding, counting against the limits, recursing once per sequence level."""

    def __init__(self, buf: memoryview, *, explicit: bool, little: bool, limits: DicomLimits, counted: int = 0) -> None:
        self.buf = buf
        self.explicit = explicit
        self.order = "<" if little else ">"
        self.limits = limits
        self.count = counted
        self.pixel_length: int | None = None
        self.fragments: int | None = None
        self.attributes: list[bytes] = []

    def _tick(self) -> None:
        self.count += 1
        if self.count > self.limits.max_elements:
            raise corrupt(f"more than {self.limits.max_elements} data elements and items (max_dicom_elements)")

    def _tag(self, pos: int) -> tuple[int, int]:
        """(tag, length) of an item or delimiter: always 4-byte lengths, no VR."""
        if pos + 8 > len(self.buf):
            raise corrupt("ends inside a sequence")
        group, elem, length = struct.unpack_from(self.order + "HHI", self.buf, pos)
        return group << 16 | elem, length

    def _header(self, pos: int) -> tuple[int, bytes | None, int, int]:
        """(tag, VR or None, length, header size) of the element at ``pos``."""
        if pos + 8 > len(self.buf):
            raise corrupt("an element header runs past the end")
        group, elem = struct.unpack_from(self.order + "HH", self.buf, pos)
        tag = group << 16 | elem
        vr = bytes(self.buf[pos + 4:pos + 6])
        # As pydicom: a VR that is not two capitals means this element is implicit VR.
        if not self.explicit or group == 0xFFFE or not (b"AA" <= vr <= b"ZZ"):
            return tag, None, struct.unpack_from(self.order + "I", self.buf, pos + 4)[0], 8
        if vr in _LONG_VRS:
            if pos + 12 > len(self.buf):
                raise corrupt("an element header runs past the end")
            return tag, vr, struct.unpack_from(self.order + "I", self.buf, pos + 8)[0], 12
        return tag, vr, struct.unpack_from(self.order + "H", self.buf, pos + 6)[0], 8

    def file_meta(self, pos: int) -> tuple[bytes, int]:
        """The Transfer Syntax UID and the offset after group 0002 (always explicit VR little endian)."""
        syntax = None
        while pos + 8 <= len(self.buf) and struct.unpack_from("<H", self.buf, pos)[0] == 0x0002:
            self._tick()
            tag, _, length, size = self._header(pos)
            start = pos + size
            if length == _UNDEFINED or start + length > len(self.buf):
                raise corrupt("the file meta information runs past the end")
            if tag == 0x00020010:
                syntax = bytes(self.buf[start:start + length])
            pos = start + length
        if not syntax:
            raise corrupt("no transfer syntax in the file meta information")
        return syntax, pos

    def dataset(self, pos: int, end: int | None, depth: int) -> int:
        """Walk elements from ``pos`` to ``end``, or (``end`` None) to an item delimiter; the position after."""
        limit = len(self.buf) if end is None else end
        while pos < limit:
            if depth == 0 and limit - pos < 8:
                break  # as pydicom: a few trailing bytes after the last element end the dataset
            tag, vr, length, size = self._header(pos)
            if tag == _ITEM_END:
                if end is None:
                    return pos + 8
                raise corrupt("an item delimiter inside an item of defined length")
            self._tick()
            pos += size
            if length == _UNDEFINED:
                if tag == _PIXEL_DATA or vr not in (None, b"SQ", b"UN"):  # encapsulated (also an icon's)
                    pos = self._fragments(pos, top=tag == _PIXEL_DATA and depth == 0)
                else:
                    pos = self._sequence(pos, None, depth + 1)
                continue
            if pos + length > limit:
                raise corrupt("an element's length runs past the end of its item or the file")
            if vr == b"SQ" or (vr in (None, b"UN") and _is_sequence(tag)):  # pydicom reads a known UN as SQ
                self._sequence(pos, pos + length, depth + 1)
            if depth == 0 and tag == _PIXEL_DATA:
                self.pixel_length = length
            elif depth == 0 and tag in IMAGE_ATTRIBUTES and length <= 64:
                self.attributes.append(bytes(self.buf[pos - size:pos + length]))
            pos += length
        if end is None and depth > 0:
            raise corrupt("an item of undefined length without its delimiter")
        return pos

    def _sequence(self, pos: int, end: int | None, depth: int) -> int:
        if depth > self.limits.max_depth:
            raise corrupt(f"sequences nested deeper than {self.limits.max_depth} (max_dicom_depth)")
        while end is None or pos < end:
            tag, length = self._tag(pos)
            pos += 8
            if tag == _SEQUENCE_END:
                return pos if end is None else end
            if tag != _ITEM:
                raise corrupt("a sequence holds something other than items")
            self._tick()
            if length == _UNDEFINED:
                pos = self.dataset(pos, None, depth)
            else:
                if pos + length > (len(self.buf) if end is None else end):
                    raise corrupt("an item's length runs past the end of its sequence")
                self.dataset(pos, pos + length, depth)
                pos += length
        return pos

    def _fragments(self, pos: int, *, top: bool) -> int:
        """Encapsulated Pixel Data: the Basic Offset Table item, then one item per fragment, then a delimiter."""
        items = 0
        while True:
            tag, length = self._tag(pos)
            pos += 8
            if tag == _SEQUENCE_END:
                if top:
                    self.fragments = max(items - 1, 0)
                return pos
            if tag != _ITEM or length == _UNDEFINED or pos + length > len(self.buf):
                raise corrupt("the encapsulated pixel data is malformed")
            self._tick()
            items += 1
            pos += length


def _is_sequence(tag: int) -> bool:
    """Implicit VR: pydicom reads a defined-length element as a sequence when its dictionary says SQ."""
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False
