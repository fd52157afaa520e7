"""Where a multi-frame DICOM's frames sit in the patient: for the NIfTI label map and for DICOM SEG.

Read from the stored header (no pixel data), in this order of preference:

- the position of every frame from the enhanced multi-frame per-frame functional groups
  (``PerFrameFunctionalGroupsSequence[f].PlanePositionSequence``): ``per-frame-functional-groups``;
- else one origin from the shared functional groups' ``PlanePositionSequence``
  (``shared-functional-groups``) or the legacy ``ImagePositionPatient`` (``image-plane-module``),
  frame f placed at ``origin + f * spacing * normal``, the normal the cross product of the two
  ``ImageOrientationPatient`` directions and the spacing ``SpacingBetweenSlices``, else
  ``SliceThickness`` (functional-group ``PixelMeasuresSequence`` first, then the top-level attribute);
- orientation (``PlaneOrientationSequence`` or ``ImageOrientationPatient``) and ``PixelSpacing``
  (``PixelMeasuresSequence`` or top level) likewise.

Without a position or an orientation the geometry is ``unknown``: the affine is the pixel spacing
(or 1 mm) on the diagonal, and the output says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

UNKNOWN = "unknown"
#: The NIfTI array axes of a DICOM volume's label map: i = column, j = row, k = frame.
NIFTI_AXES = "i=column, j=row, k=frame"
#: DICOM patient coordinates are LPS; NIfTI's are RAS: x and y change sign.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class FrameGeometry:
    """The geometry of F frames of R x C pixels, in DICOM patient coordinates (LPS, mm)."""

    #: ``per-frame-functional-groups``, ``shared-functional-groups``, ``image-plane-module`` or ``unknown``
    source: str
    frames: int
    #: LPS position of every frame's first pixel (None when unknown)
    positions: np.ndarray | None
    #: direction of increasing column index, then of increasing row index (``ImageOrientationPatient``)
    orientation: np.ndarray | None
    #: (between rows, between columns) in mm, ``PixelSpacing`` order; None when absent
    pixel_spacing: tuple[float, float] | None
    #: distance between frames along the normal; None when absent
    slice_spacing: float | None
    #: which attribute each part came from, and what is missing
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def known(self) -> bool:
        return self.source != UNKNOWN

    def nifti_affine(self) -> np.ndarray:
        """RAS affine of the label map laid out (C, R, F): i = column, j = row, k = frame."""
        row_mm, col_mm = self.pixel_spacing or (1.0, 1.0)
        if self.positions is None or self.orientation is None:
            return np.diag([col_mm, row_mm, self.slice_spacing or 1.0, 1.0])
        along_row, along_column = self.orientation[:3], self.orientation[3:]
        if self.frames > 1:
            step = (self.positions[-1] - self.positions[0]) / (self.frames - 1)
        else:
            step = np.cross(along_row, along_column) * (self.slice_spacing or 1.0)
        lps = np.eye(4)
        lps[:3, 0] = along_row * col_mm
        lps[:3, 1] = along_column * row_mm
        lps[:3, 2] = step
        lps[:3, 3] = self.positions[0]
        return LPS_TO_RAS @ lps

    def provenance(self) -> dict[str, Any]:
        return {"geometry": self.source, "geometry_detail": {"axes": NIFTI_AXES, **self.details}}


def _group_item(ds: Dataset, name: str, frame: int) -> tuple[Dataset | None, str | None]:
    """The first item of functional group ``name`` for ``frame``: per-frame first, then shared."""
    for groups, index, where in (
        ("PerFrameFunctionalGroupsSequence", frame, "per-frame-functional-groups"),
        ("SharedFunctionalGroupsSequence", 0, "shared-functional-groups"),
    ):
        sequence = ds.get(groups)
        if sequence and index < len(sequence):
            inner = sequence[index].get(name)
            if inner:
                return inner[0], where
    return None, None


def _floats(value: Any, count: int) -> np.ndarray | None:
    try:
        array = np.asarray([float(v) for v in value], np.float64)
    except (TypeError, ValueError):
        return None
    return array if array.shape == (count,) and np.all(np.isfinite(array)) else None


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def frame_geometry(ds: Dataset) -> FrameGeometry:
    """The geometry of a (multi-frame) DICOM header; never raises, ``source`` says what was found."""
    frames = int(ds.get("NumberOfFrames") or 1)
    details: dict[str, Any] = {}
    missing: list[str] = []
    orientation = _orientation(ds, details)
    if orientation is None:
        missing.append("ImageOrientationPatient")
    pixel_spacing, slice_spacing = _spacings(ds, details)
    positions, source = _per_frame_positions(ds, frames), "per-frame-functional-groups"
    if positions is not None:
        details["slice_spacing"] = "per-frame plane positions"
        if frames > 1:
            slice_spacing = float(np.linalg.norm(positions[-1] - positions[0]) / (frames - 1))
    else:
        origin, source = _origin(ds)
        if origin is None:
            missing.append("ImagePositionPatient")
        if frames > 1 and slice_spacing is None:
            missing.append("SpacingBetweenSlices or SliceThickness")
        if origin is not None and orientation is not None and not missing:
            normal = np.cross(orientation[:3], orientation[3:])
            normal /= np.linalg.norm(normal)
            positions = origin + np.arange(frames)[:, None] * (slice_spacing or 0.0) * normal
            if frames > 1:
                details["positions"] = "synthesized along the slice normal"
    if positions is None or orientation is None:
        source, positions = UNKNOWN, None
    if slice_spacing is None:
        details["slice_spacing"] = "unknown: 1 mm assumed"
    if missing:
        details["missing"] = missing
    return FrameGeometry(source, frames, positions, orientation, pixel_spacing, slice_spacing, details)


def _orientation(ds: Dataset, details: dict[str, Any]) -> np.ndarray | None:
    item, where = _group_item(ds, "PlaneOrientationSequence", 0)
    orientation = _floats(item.get("ImageOrientationPatient"), 6) if item is not None else None
    if orientation is None:
        orientation, where = _floats(ds.get("ImageOrientationPatient"), 6), "ImageOrientationPatient"
    if orientation is None or np.linalg.norm(np.cross(orientation[:3], orientation[3:])) < 1e-6:
        return None
    details["orientation"] = where
    return orientation


def _spacings(ds: Dataset, details: dict[str, Any]) -> tuple[tuple[float, float] | None, float | None]:
    """``PixelSpacing`` and the slice spacing (``SpacingBetweenSlices``, else ``SliceThickness``)."""
    measures, where = _group_item(ds, "PixelMeasuresSequence", 0)
    holders = [(holder, label) for holder, label in ((measures, where), (ds, "top level")) if holder is not None]
    pixel_spacing: tuple[float, float] | None = None
    for holder, label in holders:
        spacing = _floats(holder.get("PixelSpacing"), 2)
        if spacing is not None and np.all(spacing > 0):
            pixel_spacing = (float(spacing[0]), float(spacing[1]))
            details["pixel_spacing"] = f"PixelSpacing ({label})"
            break
    else:
        details["pixel_spacing"] = "unknown: 1 mm assumed"
    for attribute in ("SpacingBetweenSlices", "SliceThickness"):
        for holder, label in holders:
            slice_spacing = _positive(holder.get(attribute))
            if slice_spacing is not None:
                details["slice_spacing"] = f"{attribute} ({label})"
                return pixel_spacing, slice_spacing
    return pixel_spacing, None


def _origin(ds: Dataset) -> tuple[np.ndarray | None, str]:
    """One position for all frames: the shared functional groups', else the legacy attribute."""
    item, _ = _group_item(ds, "PlanePositionSequence", 0)
    origin = _floats(item.get("ImagePositionPatient"), 3) if item is not None else None
    if origin is not None:
        return origin, "shared-functional-groups"
    return _floats(ds.get("ImagePositionPatient"), 3), "image-plane-module"


def _per_frame_positions(ds: Dataset, frames: int) -> np.ndarray | None:
    sequence = ds.get("PerFrameFunctionalGroupsSequence")
    if not sequence or len(sequence) < frames:
        return None
    positions = []
    for index in range(frames):
        inner = sequence[index].get("PlanePositionSequence")
        position = _floats(inner[0].get("ImagePositionPatient"), 3) if inner else None
        if position is None:
            return None
        positions.append(position)
    return np.stack(positions)
