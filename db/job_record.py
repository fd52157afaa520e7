"""The job as the rest of the system sees it: a frozen record built from a ``jobs`` row.

Every reader of a job (the public JSON, the webhook payload, the completion snapshot, the result
renderers) takes a ``Job`` built here from a SELECT or RETURNING result, never a row mapping, so
the job's shape is written once. ``MaskSummary`` is the same for a ``job_masks`` row without its
bytes, ``StoredMask`` for one with them.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import RowMapping

from db.status import JobStatus, is_terminal

#: A result row of a SELECT or RETURNING (or a dict of the same columns, as tests and snapshots build).
Row = RowMapping | Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Job:
    """Every column of ``jobs``, in table order (db/models.py ``Job``), with ``status`` typed."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    status: JobStatus
    prompts: list[str]
    options: dict[str, Any]
    input_format: str
    input_width: int
    input_height: int
    input_bytes: int
    created_at: datetime
    updated_at: datetime
    dispatched_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    attempts: int
    priority: int
    prompt_count: int
    endpoint_calls: int
    endpoint_seconds: float
    lease_expires_at: datetime | None
    error_code: str | None
    error_message: str | None
    result_width: int | None
    result_height: int | None
    #: provenance of the result: endpoint request ids, preprocessing geometry, software version
    result_meta: dict[str, Any] | None
    #: what the submit-time probe learned about a DICOM/NIfTI upload (frames, volume shape, slice axis)
    input_meta: dict[str, Any] | None
    #: ``{"done", "total"}`` slices of a running volume job
    progress: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: Row) -> Job:
        """The job of a ``jobs`` row (a SELECT of ``JOB_COLUMNS`` or a RETURNING that includes them;
        extra columns, such as the outbox's, are ignored)."""
        values = {name: row[name] for name in JOB_FIELDS}
        values["status"] = JobStatus(values["status"])
        return cls(**values)

    def as_row(self) -> dict[str, Any]:
        """The columns as a plain dict (status as its text), as a database read returns them."""
        row = {name: getattr(self, name) for name in JOB_FIELDS}
        row["status"] = self.status.value
        return row

    @property
    def is_volume(self) -> bool:
        """A 3-D job (DICOM series or NIfTI volume): its masks are volumes, served by ``/result``."""
        return (self.input_meta or {}).get("kind") == "volume"

    @property
    def is_terminal(self) -> bool:
        return is_terminal(self.status)

    @property
    def succeeded(self) -> bool:
        return self.status is JobStatus.succeeded


JOB_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Job))


@dataclass(frozen=True, slots=True)
class MaskSummary:
    """One prompt's mask, without its bytes: what the job JSON, the payload and the snapshot list."""

    index: int
    prompt: str
    label: str
    area_px: int
    #: [x0, y0, x1, y1] in original pixels, x1/y1 exclusive; None for an empty mask
    bbox: list[int] | None
    height: int
    width: int

    @classmethod
    def from_row(cls, row: Row) -> MaskSummary:
        """From a ``job_masks`` row (or a worker's row about to be inserted; ``data`` is ignored)."""
        return cls(
            index=row["index"], prompt=row["prompt"], label=row["label"], area_px=row["area_px"],
            bbox=row["bbox"], height=row["height"], width=row["width"],
        )

    def as_row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in MASK_SUMMARY_FIELDS}


MASK_SUMMARY_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(MaskSummary))


@dataclass(frozen=True, slots=True)
class StoredMask:
    """One 2-D mask with its encoded bytes (``medparse.masks``); travels to a decode process."""

    index: int
    height: int
    width: int
    encoding: str
    data: bytes

    @classmethod
    def from_row(cls, row: Row) -> StoredMask:
        return cls(
            index=row["index"], height=row["height"], width=row["width"], encoding=row["encoding"], data=row["data"]
        )


@dataclass(frozen=True, slots=True)
class MedicalRecord:
    """A job's ``job_medical`` row: what DICOM SEG / NIfTI outputs copy from the input (so they work after
    the input is deleted) and, for a volume job, every prompt's mask volume (``medparse.medical.volumes``)."""

    #: ``dicom`` or ``nifti``
    source_kind: str
    #: the DICOM dataset without pixel data, or the NIfTI header
    source_header: bytes | None
    #: the label volume's shape (the input's spatial shape); None for a 2-D result
    volume_shape: list[int] | None
    slice_axis: int | None
    #: 4x4 voxel-to-world matrix of a NIfTI input
    affine: list[list[float]] | None
    encoding: str | None
    data: bytes | None

    @classmethod
    def from_row(cls, row: Row) -> MedicalRecord:
        return cls(
            source_kind=row["source_kind"], source_header=row["source_header"], volume_shape=row["volume_shape"],
            slice_axis=row["slice_axis"], affine=row["affine"], encoding=row["encoding"], data=row["data"],
        )
