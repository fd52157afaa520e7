"""Pydantic schemas at the HTTP edge: request bodies in, ``*Public`` shapes out."""

from __future__ import annotations

import unicodedata
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from db.status import JobStatus

#: The largest value of the database's 32-bit integer columns (and of any index we accept).
INT32_MAX = 2**31 - 1


def control_characters(text: str, *, allowed: str = "") -> list[str]:
    """The control characters (Unicode Cc: NUL, ESC, DEL, ...) and lone surrogates in ``text``.

    Postgres refuses NUL in text, a terminal or log viewer interprets the others, and a lone
    surrogate cannot be encoded at all: anything that may hold them is refused at the edge."""
    return [c for c in text if c not in allowed and unicodedata.category(c) in ("Cc", "Cs")]


def _plain(text: str) -> str:
    if bad := control_characters(text):
        raise ValueError(f"must not contain control characters (found {bad[0]!r})")
    return text


def _lines(text: str) -> str:
    if bad := control_characters(text, allowed="\t\n"):
        raise ValueError(f"must not contain control characters other than tab and newline (found {bad[0]!r})")
    return text


def url_text_problem(url: str) -> str | None:
    """Why ``url`` cannot be a URL we store and call, judged on its characters alone (the SSRF
    policy judges the rest): whitespace, control and separator characters are never part of one."""
    if not url.isprintable() or any(c.isspace() for c in url):
        return "must not contain whitespace or control characters"
    return None


def _url(url: str) -> str:
    if problem := url_text_problem(url):
        raise ValueError(problem)
    return url


#: One line of text: no control characters at all.
PlainText = Annotated[str, AfterValidator(_plain)]
#: A URL's characters (gateway/webhooks/submission.py checks it as a target).
UrlText = Annotated[str, AfterValidator(_url)]
#: Free text (a description): tabs and newlines, no other control characters.
MultilineText = Annotated[str, AfterValidator(_lines)]


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


#: Bounds of a custom window, in input units: far beyond any real scanner's range (CT: -1024..
#: ~30000 HU; 16-bit MR and float volumes), near enough that center +/- width stays finite.
WINDOW_LIMIT = 1e9
#: A narrower window than this is a step function at float32 precision, and 1/width overflows.
MIN_WINDOW_WIDTH = 1e-6


class CustomWindow(BaseModel):
    # NaN and +/-Infinity are not JSON (Postgres refuses them) and mean no window: 422, not a job.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    center: Annotated[float, Field(ge=-WINDOW_LIMIT, le=WINDOW_LIMIT)]
    width: Annotated[float, Field(ge=MIN_WINDOW_WIDTH, le=WINDOW_LIMIT)]


#: A slice or frame index; int32 like the columns it ends up in.
Index = Annotated[int, Field(ge=0, le=INT32_MAX)]
SliceList = Annotated[list[Index], Field(min_length=1, max_length=4096)]


class SliceRange(BaseModel):
    """Slices ``start`` .. ``stop - 1`` of a volume (or frames of a multi-frame DICOM)."""

    model_config = ConfigDict(extra="forbid")
    start: Index
    stop: Annotated[int, Field(gt=0, le=INT32_MAX)]

    @model_validator(mode="after")
    def _stop_after_start(self) -> SliceRange:
        if self.stop <= self.start:
            raise ValueError("stop must be greater than start (stop is exclusive)")
        return self


def _by_json_type(value: object) -> str:
    """Which member of a two-shape union a value is, by its JSON type, so that a rejection names
    the member's field (``window.center``) rather than listing how every member failed. The tags
    are capitalised: gateway.jobs.submission drops them from the field path, like class names."""
    return "Object" if isinstance(value, dict | BaseModel) else "Scalar"


Window = Annotated[
    Annotated[WindowPreset, Tag("Scalar")] | Annotated[CustomWindow, Tag("Object")],
    Discriminator(_by_json_type),
]
Slices = Annotated[
    Annotated[SliceList, Tag("Scalar")] | Annotated[SliceRange, Tag("Object")],
    Discriminator(_by_json_type),
]


class ModelName(StrEnum):
    #: the 2-D model; a volume is segmented slice by slice
    medimageparse = "medimageparse"
    #: MedImageParse 3D: a whole NIfTI volume in one call (its own endpoint settings)
    medimageparse_3d = "medimageparse-3d"


class JobOptions(BaseModel):
    """Per-job options, recorded on the job and echoed back."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    modality: Modality | None = None
    #: CT window for high-bit-depth inputs: a preset name or {center, width} in input units
    window: Window | None = None
    #: one frame of a multi-frame DICOM (a 2-D job), or the volume of a 4-D NIfTI (0-based)
    frame: Index | None = None
    #: the NIfTI axis to slice along (default 2, the samples' ``volume[:, :, k]``)
    slice_axis: Literal[0, 1, 2] | None = None
    #: the slices (or DICOM frames) to segment: indices, or {start, stop}; default all
    slices: Slices | None = None
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
    #: called on the job's events (see docs/webhooks.md)
    webhook_url: UrlText | None = None
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
