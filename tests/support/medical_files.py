"""Real medical sample files, from the wheels installed here, and variants built from them.

pydicom >= 3 keeps only part of its test data in the wheel (the rest is a separate download that
cannot be fetched here); ``pydicom.data.get_testdata_file`` finds these offline:
CT (CT_small), MR (MR_small), big-endian (MR_small_bigendian), RLE (MR_small_RLE), JPEG 2000
(MR_small_jp2klossless, JPEG2000), JPEG-LS (MR_small_jpeg_ls_lossless), JPEG baseline RGB
(SC_rgb_jpeg), YBR_FULL_422 multi-frame ultrasound (examples_ybr_color, 30 frames), RGB RLE
2-frame (SC_rgb_rle_2frame), PALETTE COLOR (examples_palette), 16-bit RGB (SC_rgb_rle_16bit),
truncated (MR_truncated), undecodable JPEG (JPEG-lossy), no image (rtstruct).
Not in any installable wheel, so built here with pydicom: MONOCHROME1 (from MR_small), a
multi-frame CT (frames of CT_small), JPEG 2000 / RLE re-encodings of CT_small with the installed
encoders, and the hostile variants. nibabel's wheel ships 3-D (anatomical.nii, big-endian int16)
and 4-D (example4d.nii.gz, functional.nii) NIfTI; scikit-image's ships the pathology (ihc.png)
and retina (retina.jpg) photographs.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import warnings
import zlib

import nibabel as nib
import numpy as np
import pydicom
import skimage.data
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, RLELossless

NIBABEL_DATA = os.path.join(os.path.dirname(nib.__file__), "tests", "data")
SKIMAGE_DATA = os.path.dirname(skimage.data.__file__)


def dicom_file(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None, f"{name} is not in the installed pydicom wheel"
    with open(path, "rb") as handle:
        return handle.read()


def nifti_file(name: str) -> bytes:
    with open(os.path.join(NIBABEL_DATA, name), "rb") as handle:
        return handle.read()


def skimage_file(name: str) -> bytes:
    with open(os.path.join(SKIMAGE_DATA, name), "rb") as handle:
        return handle.read()


def _dataset(name: str) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(dicom_file(name)))


def _write(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def monochrome1() -> bytes:
    """MR_small declared MONOCHROME1: the reader must invert it."""
    ds = _dataset("MR_small.dcm")
    ds.PhotometricInterpretation = "MONOCHROME1"
    return _write(ds)


def multiframe_ct(frames: int = 3) -> bytes:
    """CT_small's pixels as a multi-frame image (each frame a shifted copy), uncompressed."""
    ds = _dataset("CT_small.dcm")
    pixels = ds.pixel_array
    stack = np.stack([np.roll(pixels, 4 * i, axis=1) for i in range(frames)])
    ds.NumberOfFrames = frames
    ds.PixelData = stack.astype(pixels.dtype).tobytes()
    return _write(ds)


def multiframe_ct_geometry(frames: int = 3, *, geometry: str) -> bytes:
    """``multiframe_ct`` with its geometry moved or removed (``ImagePositionPatient`` [-158.1, -179.0, -75.7],
    axial orientation, ``PixelSpacing`` 0.661468, slices 5 mm apart in the legacy original).

    ``shared``: only ``SharedFunctionalGroupsSequence`` (one plane position, orientation, pixel measures
    with ``SpacingBetweenSlices`` 2.5), no top-level geometry. ``per-frame``: per-frame plane positions
    3 mm apart along +z plus shared orientation/measures. ``no-spacing``: legacy position and orientation
    but no ``SpacingBetweenSlices``/``SliceThickness``. ``none``: no position, orientation or spacing at all.
    """
    ds = pydicom.dcmread(io.BytesIO(multiframe_ct(frames)))
    position, orientation = list(ds.ImagePositionPatient), list(ds.ImageOrientationPatient)
    spacing = list(ds.PixelSpacing)
    drop = {"shared": ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SpacingBetweenSlices",
                       "SliceThickness"),
            "no-spacing": ("SpacingBetweenSlices", "SliceThickness")}.get(geometry, ())
    if geometry in ("per-frame", "none"):
        drop = ("ImagePositionPatient", "ImageOrientationPatient", "SpacingBetweenSlices", "SliceThickness")
        drop += ("PixelSpacing",) if geometry == "none" else ()
    for name in drop:
        delattr(ds, name)

    def item(**attributes: object) -> pydicom.Dataset:
        inner = pydicom.Dataset()
        for name, value in attributes.items():
            setattr(inner, name, value)
        return inner

    if geometry in ("shared", "per-frame"):
        shared = item(
            PlaneOrientationSequence=[item(ImageOrientationPatient=orientation)],
            PixelMeasuresSequence=[item(PixelSpacing=spacing, SpacingBetweenSlices=2.5, SliceThickness=2.5)],
        )
        if geometry == "shared":
            shared.PlanePositionSequence = [item(ImagePositionPatient=position)]
        ds.SharedFunctionalGroupsSequence = [shared]
    if geometry == "per-frame":
        ds.PerFrameFunctionalGroupsSequence = [
            item(PlanePositionSequence=[item(ImagePositionPatient=[position[0], position[1], position[2] + 3 * f])])
            for f in range(frames)
        ]
    return _write(ds)


def reencoded_ct(syntax: str) -> bytes:
    """CT_small compressed with an installed encoder (``jpeg2000`` via openjpeg, ``rle`` via pylibjpeg-rle)."""
    ds = _dataset("CT_small.dcm")
    uid = {"jpeg2000": JPEG2000Lossless, "rle": RLELossless}[syntax]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.compress(uid)
    return _write(ds)


def dicom_declaring(rows: int, columns: int, frames: int) -> bytes:
    """CT_small whose header declares a huge image (the pixel data stays small)."""
    ds = _dataset("CT_small.dcm")
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    return _write(ds)


def damaged_pixels(name: str) -> bytes:
    """The file with the middle of its compressed pixel data (inside the fragment) overwritten with noise."""
    raw = bytearray(dicom_file(name))
    ds = _dataset(name)
    pixel_data = bytes(ds.PixelData)
    start = raw.rfind(pixel_data[-64:]) + 64 - len(pixel_data)  # where the element's value sits in the file
    assert start > 0
    lo, hi = start + len(pixel_data) // 3, start + 2 * len(pixel_data) // 3
    raw[lo:hi] = np.random.default_rng(7).integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
    return bytes(raw)


def without_preamble(data: bytes) -> bytes:
    return data[132:]


def truncated(data: bytes, keep: float = 0.6) -> bytes:
    return data[: int(len(data) * keep)]


def nifti_with(data: bytes, *, dims: tuple[int, ...] | None = None, datatype: int | None = None,
               vox_offset: float | None = None, magic: bytes | None = None) -> bytes:
    """A NIfTI-1 file (gzip'd if the input was) with raw header fields overwritten."""
    gz = data.startswith(b"\x1f\x8b")
    raw = bytearray(gzip.decompress(data) if gz else data)
    order = "<" if struct.unpack("<i", raw[:4])[0] == 348 else ">"
    if dims is not None:
        raw[40:56] = struct.pack(order + "8h", len(dims), *dims, *([1] * (7 - len(dims))))
    if datatype is not None:
        raw[70:72] = struct.pack(order + "h", datatype)
    if vox_offset is not None:
        raw[108:112] = struct.pack(order + "f", vox_offset)
    if magic is not None:
        raw[344:348] = magic
    return gzip.compress(bytes(raw), mtime=0) if gz else bytes(raw)


def gzip_bomb_nifti() -> bytes:
    """A tiny .nii.gz header declaring a modest volume followed by far more zeros than declared."""
    image = nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    return gzip.compress(image.to_bytes() + b"\0" * (64 * 1024 * 1024), compresslevel=9, mtime=0)


def synthetic_ct_volume(shape: tuple[int, int, int] = (48, 40, 6)) -> bytes:
    """A small CT-like .nii.gz in HU: a bright 'organ' ellipse in soft tissue, int16, non-trivial affine."""
    x, y = np.ogrid[: shape[0], : shape[1]]
    organ = ((x - shape[0] * 0.45) / (shape[0] * 0.25)) ** 2 + ((y - shape[1] * 0.5) / (shape[1] * 0.3)) ** 2 <= 1
    volume = np.full(shape, -80, np.int16)
    volume[organ] = 180
    volume += np.random.default_rng(3).normal(0, 5, shape).astype(np.int16)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = [-20.0, -16.0, 40.0]
    image = nib.Nifti1Image(volume, affine)
    image.header.set_xyzt_units("mm")
    return gzip.compress(image.to_bytes(), mtime=0)


# --- hostile files (issue 12): each built in a few ms, none holding what it declares ---------------

DEFLATED = "1.2.840.10008.1.2.1.99"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _image_dataset(rows: int, columns: int, frames: int) -> pydicom.Dataset:
    """A minimal 16-bit MONOCHROME2 CT image's attributes, without Pixel Data."""
    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.Modality = "CT"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


def _part10(syntax: str, body: bytes) -> bytes:
    """Preamble, DICM and a file meta group naming ``syntax``, then ``body`` (the dataset as stored)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    meta.TransferSyntaxUID = syntax
    fp = DicomBytesIO()
    write_file_meta_info(fp, meta)
    return b"\0" * 128 + b"DICM" + fp.getvalue() + body


def _explicit_le(ds: pydicom.Dataset) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def _element(group: int, elem: int, vr: bytes, length: int) -> bytes:
    """An explicit VR little endian element header with a 4-byte length (OB, OW, SQ, UN, ...)."""
    return struct.pack("<HH2sHI", group, elem, vr, 0, length)


def deflate_bomb_dicom(inflated: int = 1 << 30, block: int = 1 << 20) -> bytes:
    """Deflated Explicit VR Little Endian whose dataset inflates to ``inflated`` bytes (~1/1000 of that on disk).

    The dataset declares 32768x32768 16-bit pixels; its Pixel Data is zeros. After every 1 MiB block the
    compressor is fully flushed (its window reset), so one compressed block can be repeated as often as needed.
    """
    ds = _image_dataset(32768, 32768, 1)
    del ds.NumberOfFrames
    head = _explicit_le(ds) + _element(0x7FE0, 0x0010, b"OW", inflated)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    start = packer.compress(head) + packer.flush(zlib.Z_FULL_FLUSH)
    zeros = packer.compress(b"\0" * block) + packer.flush(zlib.Z_FULL_FLUSH)
    return _part10(DEFLATED, start + zeros * (inflated // block) + packer.flush(zlib.Z_FINISH))


def deflated_dicom(name: str = "CT_small.dcm") -> bytes:
    """A real sample file saved with the Deflated Explicit VR Little Endian transfer syntax."""
    ds = _dataset(name)
    ds.file_meta.TransferSyntaxUID = DEFLATED
    return _write(ds)


def truncated_deflate_dicom() -> bytes:
    """``deflated_dicom`` with its deflate stream cut in the middle."""
    data = deflated_dicom()
    return data[: len(data) - len(data) // 3]


def dicom_native(rows: int, columns: int, frames: int, pixel_bytes: int, syntax: str = EXPLICIT_LE) -> bytes:
    """A ~1 KB uncompressed DICOM declaring rows x columns x frames 16-bit pixels, holding ``pixel_bytes``."""
    body = _explicit_le(_image_dataset(rows, columns, frames))
    return _part10(syntax, body + _element(0x7FE0, 0x0010, b"OW", pixel_bytes) + b"\0" * pixel_bytes)


def dicom_huge_length() -> bytes:
    """An element (a private OB) declaring 0xFFFFFFFE bytes in a 1 KB file."""
    body = _explicit_le(_image_dataset(1, 1, 1)) + _element(0x0009, 0x1010, b"OB", 0xFFFFFFFE) + b"\0" * 64
    return _part10(EXPLICIT_LE, body)


def dicom_nested_sequences(depth: int = 100_000) -> bytes:
    """Sequences of undefined length nested ``depth`` deep (16 bytes a level), before any Pixel Data."""
    seq = _element(0x0009, 0x1020, b"SQ", 0xFFFFFFFF)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    item_end = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    seq_end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    nested = (seq + item) * depth + (item_end + seq_end) * depth
    body = _explicit_le(_image_dataset(1, 1, 1)) + nested + _element(0x7FE0, 0x0010, b"OW", 2) + b"\0\0"
    return _part10(EXPLICIT_LE, body)


def dicom_many_items(items: int = 1_000_000) -> bytes:
    """One sequence of ``items`` empty items (8 bytes each): a Dataset object per item if parsed."""
    empty = struct.pack("<HHI", 0xFFFE, 0xE000, 0)
    seq = _element(0x0009, 0x1020, b"SQ", 0xFFFFFFFF) + empty * items + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    body = _explicit_le(_image_dataset(1, 1, 1)) + seq + _element(0x7FE0, 0x0010, b"OW", 2) + b"\0\0"
    return _part10(EXPLICIT_LE, body)


def dicom_many_elements(elements: int = 1_000_000) -> bytes:
    """``elements`` empty private elements (8 bytes each) after the image attributes: an object each if parsed."""
    per_group = 0xF000

    def group(number: int, count: int) -> bytes:
        return b"".join(struct.pack("<HH2sH", 0x0029 + 2 * number, 0x1000 + i, b"LO", 0) for i in range(count))

    full, rest = divmod(elements, per_group)
    many = b"".join(group(g, per_group) for g in range(full)) + group(full, rest)
    body = _explicit_le(_image_dataset(1, 1, 1)) + many
    return _part10(EXPLICIT_LE, body + _element(0x7FE0, 0x0010, b"OW", 2) + b"\0\0")


def nifti2_declaring(shape: tuple[int, ...], datatype: int = 2, gz: bool = False) -> bytes:
    """A bare NIfTI-2 header (540 bytes + 4 extension bytes) declaring ``shape`` and holding no voxels."""
    header = nib.Nifti2Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8 if datatype == 2 else np.float64)
    header["vox_offset"] = 544
    raw = header.binaryblock + b"\0\0\0\0"
    return gzip.compress(raw, mtime=0) if gz else raw


def nifti_zero_volume_gz(shape: tuple[int, int, int], dtype: str = "f8", *, extra: int = 0) -> bytes:
    """A .nii.gz of a ``shape`` volume of zeros (and ``extra`` zero bytes more than declared), built from
    repeated fully-flushed blocks."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.dtype(dtype))
    header["vox_offset"] = 352
    total = int(np.prod(shape)) * np.dtype(dtype).itemsize + extra
    block = 1 << 20
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [packer.compress(header.binaryblock + b"\0\0\0\0"), packer.flush(zlib.Z_FULL_FLUSH)]
    zeros = packer.compress(b"\0" * block) + packer.flush(zlib.Z_FULL_FLUSH)
    out.append(zeros * (total // block))
    out.append(packer.compress(b"\0" * (total % block)) + packer.flush(zlib.Z_FINISH))
    return _gzip_trailer_fixed(b"".join(out), header.binaryblock + b"\0\0\0\0", total)


def nifti_many_extensions(count: int = 1_000_000) -> bytes:
    """A NIfTI-1 whose 16-byte extensions fill the space before vox_offset (one Python object each if read)."""
    header = nib.Nifti1Header()
    header.set_data_shape((2, 2, 2))
    header.set_data_dtype(np.uint8)
    header["vox_offset"] = 352 + 16 * count
    ext = struct.pack("<ii", 16, 6) + b"\0" * 8  # esize 16, ecode 6 (comment)
    return header.binaryblock + b"\1\0\0\0" + ext * count + b"\0" * 8


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(kind)))


def _zeros_deflate(total: int, *, wbits: int = 15, block: int = 1 << 20) -> bytes:
    """A zlib stream of ``total`` zero bytes, ~1/1000 of that, built from one repeated fully-flushed block."""
    packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
    head = packer.compress(b"") + packer.flush(zlib.Z_FULL_FLUSH)  # the zlib/gzip header comes first
    zeros = packer.compress(b"\0" * block) + packer.flush(zlib.Z_FULL_FLUSH)
    stream = head + zeros * (total // block) + packer.compress(b"\0" * (total % block)) + packer.flush(zlib.Z_FINISH)
    return stream[:-4] + struct.pack(">I", (total % 65521) << 16 | 1)  # Adler-32 of `total` zeros: a = 1, b = total


def _gzip_trailer_fixed(stream: bytes, data_head: bytes, zeros: int, block: int = 1 << 20) -> bytes:
    """A gzip stream of ``data_head`` + ``zeros`` zero bytes with its CRC-32 and size made right."""
    crc = zlib.crc32(data_head)
    chunk = b"\0" * block
    for _ in range(zeros // block):
        crc = zlib.crc32(chunk, crc)
    crc = zlib.crc32(b"\0" * (zeros % block), crc)
    return stream[:-8] + struct.pack("<II", crc, (len(data_head) + zeros) & 0xFFFFFFFF)


def png_zeros(width: int, height: int, *, bit_depth: int = 16, color_type: int = 6, extra: bytes = b"") -> bytes:
    """A valid PNG of black pixels (every row filter None), its image data ~1/1000 of its inflated size.

    ``extra`` chunks go between IHDR and IDAT.
    """
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    row = (width * channels * bit_depth + 7) // 8
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    idat = _zeros_deflate(height * (row + 1))
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + extra + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def png_text_bomb(inflated: int = 1 << 30, kind: bytes = b"zTXt") -> bytes:
    """A 4x4 PNG with a zTXt (or iCCP) chunk whose compressed text inflates to ``inflated`` bytes."""
    body = b"Comment\0\0" + _zeros_deflate(inflated) if kind == b"zTXt" else b"icc\0\0" + _zeros_deflate(inflated)
    return png_zeros(4, 4, bit_depth=8, color_type=0, extra=_png_chunk(kind, body))


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small real JPEG whose start-of-frame declares ``width`` x ``height``."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _tiff_ifd(width: int, height: int, strip: int, next_ifd: int, extra: list[tuple[int, int, int, int]]) -> bytes:
    entries = sorted([
        (256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
        (273, 4, 1, strip), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, 1), *extra,
    ])
    out = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        out += struct.pack("<HHII", tag, kind, count, value)
    return out + struct.pack("<I", next_ifd)


def tiff_declaring(width: int, height: int, pages: int = 1) -> bytes:
    """A little-endian TIFF of ``pages`` 8-bit gray pages, each declaring ``width`` x ``height`` (one pixel stored)."""
    ifd_size = 2 + 9 * 12 + 4
    first = 16
    ifds = b"".join(
        _tiff_ifd(width, height, 8, first + (i + 1) * ifd_size if i + 1 < pages else 0, []) for i in range(pages)
    )
    return b"II*\0" + struct.pack("<I", first) + b"\0" * 8 + ifds


def tiff_big_tag(values: int = 4_000_000) -> bytes:
    """A 1x1 TIFF with a private LONG tag of ``values`` distinct values (a tuple of Python ints if read)."""
    first = 16
    ifd_size = 2 + 10 * 12 + 4
    data_at = first + ifd_size
    ifd = _tiff_ifd(1, 1, 8, 0, [(65000, 4, values, data_at)])
    payload = np.arange(1000, 1000 + values, dtype="<u4").tobytes()
    return b"II*\0" + struct.pack("<I", first) + b"\0" * 8 + ifd + payload
