"""DICOM SEG (highdicom) for DICOM inputs: one binary segment per prompt, referencing the source.

The source is the input's own header, stored without pixel data (``job_medical.source_header``), so
the SEG references the input's Study / Series / SOP Instance UIDs (and Frame of Reference when it has
one) and a PACS viewer shows it on top of the image. UIDs are derived from the job id, so fetching the
SEG twice gives the same instance instead of a duplicate series. Segment labels are the prompts (64
characters at most, the LO limit); the category/type codes are the generic SNOMED "Tissue", since the
model's 16 categories have no curated code mapping; the algorithm is identified as MedImageParse.

A legacy multi-frame source (one ``ImagePositionPatient`` for all frames, no per-frame functional
groups) gets per-frame plane positions synthesized along the slice normal from its position,
orientation and ``SpacingBetweenSlices`` / ``SliceThickness`` (``medparse.medical.geometry``); when
one of those is missing the SEG cannot be placed and ``SegUnavailable`` names the attribute.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes

from medparse import __version__
from medparse.imaging import quiet_warnings
from medparse.medical import dicom, geometry

_UID_NAMESPACE = uuid.UUID("0b7e7b59-55e4-4c55-a2a4-8f0f5d3c6a11")


class SegUnavailable(Exception):
    """highdicom cannot build a SEG for this source (e.g. a legacy multi-frame without geometry)."""


def derived_uid(job_id: str, what: str) -> str:
    """A DICOM UID (``2.25.<uuid as integer>``) that is the same every time for this job."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, f'{job_id}:{what}').int}"


def dicom_seg_bytes(
    source_header: bytes,
    masks01: np.ndarray,
    prompts: Sequence[str],
    *,
    job_id: str,
    model: str,
    provenance: dict[str, Any],
) -> bytes:
    """A binary SEG. ``masks01`` is (N, F, R, C) for all F source frames, or (N, R, C) for one frame.

    Raises:
        SegUnavailable: highdicom refused the source or the masks.
    """
    source = dicom.read_header_bytes(source_header)
    frames = int(source.get("NumberOfFrames") or 1)
    stack = masks01 if masks01.ndim == 4 else masks01[:, None]
    if stack.shape[1] != frames or stack.shape[2:] != (int(source.Rows), int(source.Columns)):
        raise SegUnavailable(f"masks {list(stack.shape[1:])} do not match the source's {frames} frame(s)")
    pixel_array = np.moveaxis(np.not_equal(stack, 0).astype(np.uint8), 0, -1)  # (F, R, C, N)
    family = codes.cid7162.ArtificialIntelligence
    algorithm = hd.AlgorithmIdentificationSequence(name="MedImageParse", version=model[:64], family=family)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=index + 1,
            segment_label=prompt[:64],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for index, prompt in enumerate(prompts)
    ]
    request_id = str(provenance.get("endpoint_client_request_id") or "")
    placement = _placement(source, frames)
    try:
        with quiet_warnings():
            seg = hd.seg.Segmentation(
                source_images=[source],
                pixel_array=pixel_array,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=descriptions,
                series_instance_uid=derived_uid(job_id, "series"),
                series_number=9001,
                sop_instance_uid=derived_uid(job_id, "instance"),
                instance_number=1,
                manufacturer="medparse-gateway",
                manufacturer_model_name=model[:64],
                software_versions=__version__,
                device_serial_number=job_id[:64],
                series_description="MedImageParse segmentation",
                content_description=f"request {request_id}"[:64],
                content_label="MEDPARSE",
                omit_empty_frames=False,
                **placement,
            )
            buffer = io.BytesIO()
            seg.save_as(buffer)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        raise SegUnavailable(f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}") from exc
    return buffer.getvalue()


def _placement(source: Any, frames: int) -> dict[str, Any]:
    """Plane positions, orientation and pixel measures for a multi-frame source that has no per-frame
    positions of its own (highdicom takes them from the source otherwise)."""
    if frames == 1 or "PerFrameFunctionalGroupsSequence" in source:
        return {}
    found = geometry.frame_geometry(source)
    missing = found.details.get("missing")
    if missing or found.positions is None or found.orientation is None or found.pixel_spacing is None:
        what = list(missing or []) + ([] if found.pixel_spacing is not None else ["PixelSpacing"])
        raise SegUnavailable(
            f"the multi-frame source has no per-frame plane positions and no {', '.join(what)} to derive them"
        )
    # highdicom also reads the legacy attributes off the source: fill those the functional groups hold.
    thickness = float(source.get("SliceThickness") or found.slice_spacing or 1.0)
    for name, value in (
        ("ImagePositionPatient", found.positions[0]), ("ImageOrientationPatient", found.orientation),
        ("PixelSpacing", found.pixel_spacing), ("SliceThickness", [thickness]),
    ):
        if name not in source:
            setattr(source, name, [float(v) for v in value] if len(value) > 1 else float(value[0]))
    coordinates = hd.CoordinateSystemNames.PATIENT
    return {
        "plane_positions": [
            hd.PlanePositionSequence(coordinates, [float(v) for v in position]) for position in found.positions
        ],
        "plane_orientation": hd.PlaneOrientationSequence(coordinates, [float(v) for v in found.orientation]),
        "pixel_measures": hd.PixelMeasuresSequence(
            list(found.pixel_spacing), thickness, found.slice_spacing,
        ),
    }
