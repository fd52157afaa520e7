"""The CPU and network work of one job, free of Celery and of the database.

preprocess (pad + resize to the model's square PNG) -> endpoint call -> masks back in the
original geometry -> compact encoding, area and bbox per mask.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from medparse import __version__, imaging, masks
from medparse.endpoint.client import ScoreRow
from medparse.settings import Settings
from workers.batching import RowBatcher

CALL_ID_NAMESPACE = uuid.UUID("6f1c9d2e-3b7a-4e58-9a41-0d2f6c8b5e17")


@dataclass(frozen=True)
class StoredMask:
    index: int
    prompt: str
    label: str
    area_px: int
    bbox: list[int] | None
    height: int
    width: int
    data: bytes


@dataclass(frozen=True)
class Segmentation:
    width: int
    height: int
    masks: list[StoredMask]
    provenance: dict[str, Any]
    #: the ``job_medical`` row of a DICOM/NIfTI job (workers/volume_pipeline.py), stored by lifecycle.finish
    medical: dict[str, Any] | None = None


def call_id(job_id: str, attempt: int) -> str:
    """The ``x-ms-client-request-id`` of a job's attempt: derived, so the endpoint's log (and the
    chaos tests) can tell how many calls each job got; HTTP retries within the call share it."""
    return str(uuid.uuid5(CALL_ID_NAMESPACE, f"{job_id}:{attempt}"))


def segment(
    image: bytes, prompts: list[str], *, settings: Settings, batcher: RowBatcher, job_id: str, attempt: int = 1,
    options: dict[str, Any] | None = None,
) -> Segmentation:
    prepared = imaging.prepare_image(
        image,
        target=settings.endpoint_image_size,
        png_compress_level=settings.endpoint_png_compress_level,
        max_pixels=settings.max_image_pixels,
        options=options,
        max_frames=settings.max_image_frames,
    )
    return segment_prepared(prepared, prompts, settings=settings, batcher=batcher, job_id=job_id, attempt=attempt)


def segment_prepared(
    prepared: imaging.PreparedImage, prompts: list[str], *, settings: Settings, batcher: RowBatcher, job_id: str,
    attempt: int = 1,
) -> Segmentation:
    """``segment`` of an image the caller decoded and prepared (a DICOM job's, from its one parse)."""
    scored_row = batcher.score(
        ScoreRow(image_png=prepared.png, prompts=prompts), job_id=job_id, client_request_id=call_id(job_id, attempt)
    )
    row, scored = scored_row.row, scored_row.call
    binary = masks.masks_to_original(row.masks, prepared.geometry)
    stored = []
    for index, (prompt, label, mask) in enumerate(zip(prompts, row.labels, binary, strict=True)):
        area, bbox = masks.area_and_bbox(mask)
        stored.append(
            StoredMask(
                index=index, prompt=prompt, label=label, area_px=area, bbox=bbox,
                height=int(mask.shape[0]), width=int(mask.shape[1]), data=masks.encode_mask(mask),
            )
        )
    geometry = prepared.geometry
    provenance = {
        "model": "medimageparse",
        "deployment": settings.endpoint_deployment,
        "endpoint_client_request_id": scored.client_request_id,
        "endpoint_server_request_id": scored.server_request_id,
        "endpoint_http_attempts": scored.attempts,
        "endpoint_rows_in_request": scored_row.batch_size,
        "endpoint_seconds": round(scored.seconds, 4),
        "preprocessing": prepared.params,
        "threshold": 128,
        "mask_encoding": masks.MASK_ENCODING,
        "software_version": __version__,
    }
    return Segmentation(width=geometry.orig_w, height=geometry.orig_h, masks=stored, provenance=provenance)
