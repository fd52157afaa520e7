"""Paths of a job's resources, for the job JSON (gateway) and webhook payloads alike.

One place decides which route serves a job's masks: a volume's masks are 3-D, so they come from
``/result?format=npz`` (the ``/masks*`` routes serve 2-D masks and answer 409 for a volume).
"""

from __future__ import annotations

import uuid


def job_path(job_id: uuid.UUID | str) -> str:
    return f"/v1/jobs/{job_id}"


def npz_path(job_id: uuid.UUID | str, *, volume: bool) -> str:
    """All masks of a job; ``volume``: the job is 3-D (DICOM series or NIfTI volume)."""
    base = job_path(job_id)
    return f"{base}/result?format=npz" if volume else f"{base}/masks.npz"


def mask_path(job_id: uuid.UUID | str, index: int, *, volume: bool) -> str:
    base = job_path(job_id)
    return f"{base}/result?format=npz&mask={index}" if volume else f"{base}/masks/{index}"
