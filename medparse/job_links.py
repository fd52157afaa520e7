"""Paths of a job's resources, for the job JSON (gateway) and webhook payloads alike.

One place decides which route serves a job's masks: a volume's masks are 3-D, so they come from
``/result?format=npz`` (the ``/masks*`` routes serve 2-D masks and answer 409 for a volume).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any


def job_path(job_id: uuid.UUID | str) -> str:
    return f"/v1/jobs/{job_id}"


def is_volume(row: Mapping[Any, Any]) -> bool:
    """Whether ``row`` (a ``jobs`` row) is a 3-D job: DICOM series or NIfTI volume."""
    meta = row.get("input_meta") or {}
    return meta.get("kind") == "volume"


def npz_path(row: Mapping[Any, Any]) -> str:
    base = job_path(row["id"])
    return f"{base}/result?format=npz" if is_volume(row) else f"{base}/masks.npz"


def mask_path(row: Mapping[Any, Any], index: int) -> str:
    base = job_path(row["id"])
    return f"{base}/result?format=npz&mask={index}" if is_volume(row) else f"{base}/masks/{index}"
