"""NIfTI-1/-2 uploads (.nii or .nii.gz): the header checked by hand before anything is allocated.

A hostile header can declare terabytes, a gzip can inflate a thousandfold; so the dimensions, data
type, data offset and the inflated size are checked from the raw header bytes first, the gzip is
inflated with a hard cap of exactly the declared size, and only then does nibabel read the file.
Slices are taken as the samples do: ``volume[:, :, k]`` for axis 2, no reorientation (protocol notes
4.2), so a mask maps back to the array without any affine arithmetic.
"""

from __future__ import annotations

import gzip
import io
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np

from medparse.imaging import ImageRejected
from medparse.imaging import quiet_warnings as quiet
from medparse.medical.formats import GZIP_MAGIC, NIFTI2_HEADER_SIZE, header_prefix, nifti_header_kind

#: NIfTI datatype code -> numpy dtype of the values we accept (complex, RGB and float128 are not images we segment).
DATATYPES: dict[int, str] = {
    2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8", 1280: "u8",
}
#: Extensions between the header and the data; more than this is not a real file.
MAX_VOX_OFFSET = 16 * 1024 * 1024


@dataclass(frozen=True)
class NiftiHeader:
    version: int
    byte_order: str
    #: every dimension of the data array (spatial first, then time, ...)
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    vox_offset: int

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.shape[:3]

    @property
    def frames(self) -> int:
        return self.shape[3] if len(self.shape) > 3 else 1

    @property
    def file_bytes(self) -> int:
        # Python integers: NIfTI-2 dimensions are int64, and their product would wrap around in numpy's.
        return self.vox_offset + math.prod(self.shape) * self.dtype.itemsize


AnyNifti = nib.Nifti1Image | nib.Nifti2Image
AnyNiftiType = type[nib.Nifti1Image] | type[nib.Nifti2Image]


def corrupt(detail: str) -> ImageRejected:
    return ImageRejected("corrupt_image", f"the NIfTI file is damaged or truncated ({detail}); export it again")


def parse_header(data: bytes, *, max_voxels: int, max_bytes: int, max_extensions: int | None = None) -> NiftiHeader:
    """Check the raw header of an upload.

    Raises:
        ImageRejected: not a single-file NIfTI, an impossible header, an unsupported data type,
            a volume above ``max_voxels`` (3-D, per frame) / ``max_bytes`` (the inflated file), an
            uncompressed file shorter than its header declares, or more than ``max_extensions``
            header extensions.
    """
    prefix = header_prefix(data)
    kind = nifti_header_kind(prefix)
    if kind is None:
        raise corrupt("no NIfTI header")
    version, order = kind
    magic = prefix[344:348] if version == 1 else prefix[4:12]
    if magic.startswith(b"ni"):
        raise ImageRejected(
            "unsupported_format",
            "this is a NIfTI header whose image is a separate .img file; upload one .nii or .nii.gz",
        )
    dims, datatype, bitpix, vox_offset = _raw_fields(prefix, version, order)
    ndim = dims[0]
    if not 1 <= ndim <= 7:
        raise corrupt(f"dim[0] = {ndim}")
    shape = tuple(int(d) for d in dims[1:ndim + 1])
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if any(d < 1 for d in shape):
        raise ImageRejected("empty_image", f"the NIfTI volume has no voxels (dims {list(shape)})")
    if len(shape) > 4:
        raise ImageRejected(
            "unsupported_format", f"NIfTI with {len(shape)} dimensions is not supported; use 2-D, 3-D or 4-D"
        )
    if datatype not in DATATYPES:
        raise ImageRejected(
            "unsupported_format", f"NIfTI datatype {datatype} is not supported; use integer or float voxels"
        )
    dtype = np.dtype(order + DATATYPES[datatype])
    if bitpix != dtype.itemsize * 8:
        raise corrupt(f"bitpix {bitpix} does not match datatype {datatype}")
    header_size = 348 if version == 1 else NIFTI2_HEADER_SIZE
    if not header_size <= vox_offset <= MAX_VOX_OFFSET:
        raise corrupt(f"vox_offset {vox_offset}")
    spatial = shape + (1,) * (3 - len(shape)) if len(shape) < 3 else shape
    header = NiftiHeader(version, order, spatial if len(shape) <= 3 else shape, dtype, vox_offset)
    voxels = math.prod(header.spatial_shape)
    if voxels > max_voxels or header.file_bytes > max_bytes:
        raise ImageRejected(
            "image_too_large",
            f"the NIfTI volume has {list(shape)} voxels ({header.file_bytes} bytes); the limits are {max_voxels} "
            f"voxels per volume and {max_bytes} bytes per file, crop or downsample it first",
        )
    _check_stored(data, prefix, header, max_extensions)
    return header


def _check_stored(data: bytes, prefix: bytes, header: NiftiHeader, max_extensions: int | None) -> None:
    """What a header declares against what the file holds, before anything is inflated or allocated."""
    if not data.startswith(GZIP_MAGIC) and len(data) < header.file_bytes:
        raise corrupt(f"{len(data)} bytes of {header.file_bytes} declared")
    header_size = 348 if header.version == 1 else NIFTI2_HEADER_SIZE
    if max_extensions is not None and prefix[header_size:header_size + 1] not in (b"", b"\0"):
        _check_extensions(data, header_size, header.vox_offset, header.byte_order, max_extensions)


def _check_extensions(data: bytes, header_size: int, vox_offset: int, order: str, max_extensions: int) -> None:
    """Count the header extensions as nibabel walks them (it builds an object per extension), up to the limit.

    Only the bytes up to ``vox_offset`` (at most MAX_VOX_OFFSET) are inflated for this.
    """
    region = header_prefix(data, vox_offset) if data.startswith(GZIP_MAGIC) else data  # no copy of a raw file
    pos, left, count = header_size + 4, vox_offset - header_size - 4, 0
    while left >= 16 and pos + 8 <= len(region):
        count += 1
        if count > max_extensions:
            raise ImageRejected(
                "unsupported_format",
                f"the NIfTI header has more than {max_extensions} extensions (max_nifti_extensions); "
                "save it without extensions",
            )
        esize = struct.unpack_from(order + "i", region, pos)[0]
        if esize < 8:
            raise corrupt(f"header extension of {esize} bytes")
        pos += esize
        left -= esize


def _raw_fields(prefix: bytes, version: int, order: str) -> tuple[tuple[int, ...], int, int, int]:
    """dim[8], datatype, bitpix and vox_offset from a NIfTI-1 or NIfTI-2 header."""
    if version == 1:
        dims = struct.unpack(order + "8h", prefix[40:56])
        datatype, bitpix = struct.unpack(order + "2h", prefix[70:74])
        vox_offset_f = struct.unpack(order + "f", prefix[108:112])[0]
        if not np.isfinite(vox_offset_f):
            raise corrupt("vox_offset is not a number")
        return dims, datatype, bitpix, int(vox_offset_f)
    datatype, bitpix = struct.unpack(order + "2h", prefix[12:16])
    dims = struct.unpack(order + "8q", prefix[16:80])
    return dims, datatype, bitpix, struct.unpack(order + "q", prefix[168:176])[0]


def inflate(data: bytes, header: NiftiHeader) -> bytes:
    """The uncompressed file, exactly as long as the header declares (never more is inflated)."""
    expected = header.file_bytes
    if not data.startswith(GZIP_MAGIC):
        raw = data
    else:
        inflater = zlib.decompressobj(wbits=47)
        try:
            raw = inflater.decompress(data, expected)
        except zlib.error as exc:
            raise corrupt(f"gzip: {exc}") from None
    if len(raw) < expected:
        raise corrupt(f"{len(raw)} bytes of {expected} declared")
    return raw[:expected]


def load(data: bytes, header: NiftiHeader, *, frame: int | None) -> tuple[np.ndarray, AnyNifti]:
    """The 3-D volume (frame ``frame`` of a 4-D file, default 0) with scaling applied, and the image."""
    raw = inflate(data, header)
    klass = nib.Nifti1Image if header.version == 1 else nib.Nifti2Image
    try:
        with quiet():
            image = klass.from_bytes(raw)
            proxy = image.dataobj
            if len(header.shape) == 4:
                values = np.asanyarray(proxy[..., frame or 0])
            else:
                values = np.asanyarray(proxy).reshape(header.spatial_shape)
    except (ImageRejected, MemoryError):  # a MemoryError: over the decode budget (medparse/decode_pool.py)
        raise
    except Exception as exc:  # nibabel raises many types on inconsistent headers
        raise corrupt(f"{type(exc).__name__}: {' '.join(str(exc).split())[:100]}") from exc
    if values.dtype.kind not in "uif":
        raise ImageRejected("unsupported_format", f"NIfTI voxels of type {values.dtype} are not supported")
    return values, image


def affine_of(image: AnyNifti) -> list[list[float]]:
    affine = image.affine
    return [[float(v) for v in row] for row in (affine if affine is not None else np.eye(4))]


def label_volume_bytes(
    labels: np.ndarray, header_blob: bytes | None, affine: list[list[float]] | None, *,
    description: str = "", comment: bytes = b"", xform_code: int | None = None,
) -> bytes:
    """A .nii.gz of ``labels`` with the input's header (shape, type and scaling adjusted) and affine.

    ``description`` goes into ``descrip`` (80 bytes), ``comment`` into a NIfTI comment extension.
    ``xform_code`` (when given, e.g. 1 = scanner) sets both qform and sform codes and the units to mm.
    """
    with quiet():
        header = _header_from_blob(header_blob)
        matrix = np.asarray(affine, np.float64) if affine is not None else None
        if header is not None:
            image = type_for(header)(labels, matrix, header=header)
        else:
            image = nib.Nifti1Image(labels, matrix if matrix is not None else np.eye(4))
        image.set_data_dtype(labels.dtype)
        image.header.set_slope_inter(1.0, 0.0)
        if xform_code is not None and matrix is not None:
            image.header.set_qform(matrix, code=xform_code)
            image.header.set_sform(matrix, code=xform_code)
            image.header.set_xyzt_units("mm")
        image.header["intent_code"] = 1002  # NIFTI_INTENT_LABEL
        image.header["descrip"] = description.encode("ascii", "replace")[:79]
        if comment:
            image.header.extensions.append(nib.nifti1.Nifti1Extension("comment", comment))
        image.header["cal_min"], image.header["cal_max"] = 0, int(labels.max()) if labels.size else 0
        raw = image.to_bytes()
    return gzip.compress(raw, compresslevel=6, mtime=0)


def type_for(header: nib.Nifti1Header | nib.Nifti2Header) -> AnyNiftiType:
    return nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image


def _header_from_blob(blob: bytes | None) -> nib.Nifti1Header | nib.Nifti2Header | None:
    if not blob:
        return None
    kind = nifti_header_kind(blob)
    if kind is None:
        return None
    klass = nib.Nifti1Header if kind[0] == 1 else nib.Nifti2Header
    return klass.from_fileobj(io.BytesIO(blob), check=False)


def header_blob(image: AnyNifti) -> bytes:
    """The input's header bytes, stored so the label volume can carry the same geometry and metadata."""
    return bytes(image.header.binaryblock)
