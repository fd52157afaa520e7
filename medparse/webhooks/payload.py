"""Thin event payloads: ``{type, timestamp, data}`` with the job's status, labels, a mask summary
and links. Never mask bytes, images or prompts (free text that may identify a patient).

The payload is stored with its delivery when the event happens, so every retry sends the same
body; links are paths, made absolute at send time when ``webhook_link_base_url`` is set.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from medparse import job_links

#: Standard Webhooks recommends payloads under 20 kB; we keep a margin for absolute links.
MAX_PAYLOAD_BYTES = 16_000
#: Error messages are for humans; the code is what receivers act on.
MAX_ERROR_CHARS = 500


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite hands back naive UTC datetimes
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


class PayloadJob(Protocol):
    """What a payload tells of a job (``db.job_record.Job`` is one; this library does not import ``db``)."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def status(self) -> str: ...
    @property
    def created_at(self) -> datetime | None: ...
    @property
    def started_at(self) -> datetime | None: ...
    @property
    def completed_at(self) -> datetime | None: ...
    @property
    def error_code(self) -> str | None: ...
    @property
    def error_message(self) -> str | None: ...
    @property
    def succeeded(self) -> bool: ...
    @property
    def is_volume(self) -> bool: ...


class PayloadMask(Protocol):
    """What a payload tells of one mask (``db.job_record.MaskSummary`` is one)."""

    @property
    def index(self) -> int: ...
    @property
    def label(self) -> str: ...
    @property
    def area_px(self) -> int: ...
    @property
    def bbox(self) -> list[int] | None: ...


def build_payload(event_type: str, job: PayloadJob, masks: Sequence[PayloadMask], now: datetime) -> dict[str, Any]:
    """The event body for ``job`` and its mask summaries (possibly empty)."""
    base = job_links.job_path(job.id)
    urls = {"get": base, "deliveries": f"{base}/deliveries"}
    succeeded = job.succeeded
    if succeeded:
        urls["masks_npz"] = job_links.npz_path(job.id, volume=job.is_volume)
    error = None
    if job.error_code:
        error = {"code": job.error_code, "message": (job.error_message or "")[:MAX_ERROR_CHARS]}
    data: dict[str, Any] = {
        "id": str(job.id),
        "status": str(job.status),
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "completed_at": _iso(job.completed_at),
        "error": error,
        "labels": [m.label for m in masks] if succeeded else [],
        "masks": [
            {
                "index": m.index, "label": m.label, "area_px": m.area_px, "bbox": m.bbox,
                "url": job_links.mask_path(job.id, m.index, volume=job.is_volume),
            }
            for m in masks
        ] if succeeded else [],
        "urls": urls,
    }
    payload = {"type": event_type, "timestamp": _iso(now), "data": data}
    if len(orjson.dumps(payload)) > MAX_PAYLOAD_BYTES:
        # Many prompts: keep the links, drop the per-mask details and then labels (one GET away).
        data["masks"] = []
        data["masks_truncated"] = True
        while data["labels"] and len(orjson.dumps(payload)) > MAX_PAYLOAD_BYTES:
            data["labels"] = data["labels"][: len(data["labels"]) // 2]
            data["labels_truncated"] = True
    return payload


def _absolute(path: str, base_url: str) -> str:
    return base_url.rstrip("/") + path if path.startswith("/") else path


def render_body(payload: Mapping[str, Any], base_url: str | None) -> bytes:
    """The exact bytes that are signed and sent."""
    if not base_url:
        return orjson.dumps(payload)
    data = dict(payload["data"])
    data["urls"] = {k: _absolute(v, base_url) for k, v in data.get("urls", {}).items()}
    data["masks"] = [{**m, "url": _absolute(m["url"], base_url)} for m in data.get("masks", [])]
    return orjson.dumps({**payload, "data": data})
