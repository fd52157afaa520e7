"""Which medical format an upload is, from its bytes (never its name)."""

from __future__ import annotations

import struct
import zlib
from typing import Literal

MedicalFormat = Literal["dicom", "nifti"]

#: DICOM Part 10: a 128-byte preamble, then ``DICM``.
DICOM_MAGIC = b"DICM"
DICOM_MAGIC_OFFSET = 128
GZIP_MAGIC = b"\x1f\x8b"
NIFTI1_HEADER_SIZE = 348
NIFTI2_HEADER_SIZE = 540
#: Single-file magics; ``ni1``/``ni2`` mean a header whose image is in a separate ``.img`` file.
NIFTI1_MAGICS = (b"n+1\x00", b"ni1\x00")
NIFTI2_MAGICS = (b"n+2\x00\r\n\x1a\n", b"ni2\x00\r\n\x1a\n")


def sniff_medical(data: bytes) -> MedicalFormat | None:
    if data[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC:
        return "dicom"
    if nifti_header_kind(header_prefix(data)) is not None:
        return "nifti"
    return None


def header_prefix(data: bytes, size: int = NIFTI2_HEADER_SIZE) -> bytes:
    """The first ``size`` bytes of the file, inflated if it is gzip; b"" if the gzip is broken."""
    if not data.startswith(GZIP_MAGIC):
        return data[:size]
    try:
        return zlib.decompressobj(wbits=47).decompress(data, size)  # 47 = auto-detect gzip or zlib
    except zlib.error:
        return b""


def nifti_header_kind(prefix: bytes) -> tuple[int, str] | None:
    """(1 or 2, byte order ``<``/``>``) when ``prefix`` starts a NIfTI-1 or NIfTI-2 header."""
    for order in "<>":
        if len(prefix) >= NIFTI1_HEADER_SIZE and struct.unpack(order + "i", prefix[:4])[0] == NIFTI1_HEADER_SIZE:
            if prefix[344:348] in NIFTI1_MAGICS:
                return 1, order
        if len(prefix) >= NIFTI2_HEADER_SIZE and struct.unpack(order + "i", prefix[:4])[0] == NIFTI2_HEADER_SIZE:
            if prefix[4:12] in NIFTI2_MAGICS:
                return 2, order
    return None
