"""Pydantic schemas at the HTTP edge: request bodies in, ``*Public`` shapes out."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

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


class JobOptions(BaseModel):
    """Per-job options, recorded on the job and echoed back."""

    model_config = ConfigDict(extra="forbid")
    modality: Modality | None = None
    #: CT window for high-bit-depth inputs: a preset name or {center, width} in input units
    window: WindowPreset | CustomWindow | None = None


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
