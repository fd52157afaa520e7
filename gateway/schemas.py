"""Pydantic schemas at the HTTP edge: request bodies in, ``*Public`` shapes out."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from db.status import JobStatus


class Modality(StrEnum):
    ct = "ct"
    mri = "mri"
    xray = "xray"
    pathology = "pathology"
    ultrasound = "ultrasound"
    fundus = "fundus"
    endoscopy = "endoscopy"
    dermoscopy = "dermoscopy"
    oct = "oct"
    other = "other"


class WindowPreset(StrEnum):
    abdomen = "abdomen"
    lung = "lung"
    pelvis = "pelvis"
    liver = "liver"
    colon = "colon"
    pancreas = "pancreas"


class CustomWindow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    center: float
    width: Annotated[float, Field(gt=0)]


SliceList = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=4096)]


class SliceRange(BaseModel):
    """Slices ``start`` .. ``stop - 1`` of a volume (or frames of a multi-frame DICOM)."""

    model_config = ConfigDict(extra="forbid")
    start: Annotated[int, Field(ge=0)]
    stop: Annotated[int, Field(gt=0)]

    @model_validator(mode="after")
    def _stop_after_start(self) -> SliceRange:
        if self.stop <= self.start:
            raise ValueError("stop must be greater than start (stop is exclusive)")
        return self


class ModelName(StrEnum):
    #: the 2-D model; a volume is segmented slice by slice
    medimageparse = "medimageparse"
    #: MedImageParse 3D: a whole NIfTI volume in one call (its own endpoint settings)
    medimageparse_3d = "medimageparse-3d"


class JobOptions(BaseModel):
    """Per-job options, recorded on the job and echoed back."""

    model_config = ConfigDict(extra="forbid")
    modality: Modality | None = None
    #: CT window for high-bit-depth inputs: a preset name or {center, width} in input units
    window: WindowPreset | CustomWindow | None = None
    #: one frame of a multi-frame DICOM (a 2-D job), or the volume of a 4-D NIfTI (0-based)
    frame: Annotated[int, Field(ge=0)] | None = None
    #: the NIfTI axis to slice along (default 2, the samples' ``volume[:, :, k]``)
    slice_axis: Literal[0, 1, 2] | None = None
    #: the slices (or DICOM frames) to segment: indices, or {start, stop}; default all
    slices: SliceList | SliceRange | None = None
    #: which model segments the job (default medimageparse)
    model: ModelName | None = None


class JobCreateJson(BaseModel):
    """``POST /v1/jobs`` with ``Content-Type: application/json``."""

    model_config = ConfigDict(extra="forbid")
    image_base64: Annotated[str, Field(min_length=1)]
    prompts: str | list[str]
    options: JobOptions = Field(default_factory=JobOptions)
    #: higher runs first within the tenant's own queue (-100..100)
    priority: int = 0
    #: called on the job's events (see the README's Webhooks section)
    webhook_url: str | None = None
    #: default: the terminal events job.succeeded, job.failed, job.canceled
    webhook_events: list[str] | None = None


class ErrorPublic(BaseModel):
    code: str
    message: str


class InputPublic(BaseModel):
    #: DICOM/NIfTI inputs add what the probe found: ``kind`` (image/volume), ``frames``, ``shape``,
    #: ``slice_axis``, ``slices``, ``photometric``, ``transfer_syntax``, ``modality``
    model_config = ConfigDict(extra="allow")
    width: int
    height: int
    format: str
    bytes: int


class MaskPublic(BaseModel):
    index: int
    prompt: str
    label: str
    area_px: int
    #: [x0, y0, x1, y1] in original pixels, x1/y1 exclusive; null for an empty mask
    bbox: list[int] | None
    url: str


class ResultPublic(BaseModel):
    width: int
    height: int
    masks: list[MaskPublic]
    npz_url: str
    provenance: dict[str, object]
    #: ``GET /v1/jobs/{id}/result?format=...`` URL of every output format this result has
    formats: dict[str, str] | None = None
    #: volume results: ``shape`` (the input's), ``slice_axis``, ``affine`` (NIfTI)
    volume: dict[str, object] | None = None


class ProgressPublic(BaseModel):
    #: slices segmented so far, of ``total``
    done: int
    total: int


class JobUrls(BaseModel):
    get: str
    cancel: str


class JobPublic(BaseModel):
    id: uuid.UUID
    status: JobStatus
    prompts: list[str]
    options: dict[str, object]
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    attempts: int
    priority: int
    error: ErrorPublic | None
    input: InputPublic
    result: ResultPublic | None
    urls: JobUrls
    #: volume jobs: slices done so far (null for 2-D jobs)
    progress: ProgressPublic | None = None


class JobsPublic(BaseModel):
    data: list[JobPublic]
    next_cursor: str | None


class ProblemPublic(BaseModel):
    type: str
    title: str
    status: int
    code: str
    detail: str
    instance: str
    fields: list[dict[str, object]] | None = None


class HealthPublic(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)
