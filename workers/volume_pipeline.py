"""Jobs whose input is DICOM or NIfTI: 2-D DICOM, volumes slice by slice, and the 3-D model.

``segment_job`` is what ``workers.tasks.run_job`` calls for every job. The input is decoded first, in
a decode process within its memory and time budget (``workers.decode_steps``, medparse/decode_pool.py):
PNG/JPEG/TIFF and a 2-D DICOM come back as the model's PNG and go through ``segment_prepared`` (a
DICOM's header is kept for DICOM SEG output); a volume comes back as its selected 8-bit slices and is
segmented here. With the
2-D model its selected slices go to the endpoint a few per request (``volume_rows_per_request``,
bounded by ``volume_max_masks_per_request``) through the same client, so retries, auth and the
global in-flight cap are the usual ones; after each request the job's ``progress`` is updated with
an UPDATE pinned to the attempt. When that UPDATE finds no row the job was canceled or taken over:
the loop stops and ``lifecycle.finish`` discards the partial result. With the 3-D model the NIfTI
goes out whole in one call and a label volume comes back.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections import Counter
from typing import Any

import numpy as np

from db import medical as medical_repo
from medparse import __version__, imaging, masks
from medparse.decode_pool import decodes_inline
from medparse.endpoint.errors import EndpointBadResponse, EndpointNotFound
from medparse.endpoint.protocol import ScoreResult, ScoreRow
from medparse.imaging import ImageRejected
from medparse.medical import inputs, volumes
from medparse.medical.errors import OptionRejected
from medparse.medical.options import MODEL_2D, MODEL_3D
from workers.context import WorkerContext
from workers.decode_steps import DecodedInput, decode_input
from workers.lifecycle import Claim
from workers.pipeline import CALL_ID_NAMESPACE, Segmentation, StoredMask, call_id, segment_prepared

log = logging.getLogger(__name__)


def segment_job(ctx: WorkerContext, claimed: Claim, job_id: str) -> Segmentation:
    """Segment a claimed job of any input kind (see the module docstring).

    Raises:
        ImageRejected: the input cannot be segmented (``invalid_option`` when an option no longer fits).
        EndpointError: the endpoint call failed.
    """
    try:
        return _segment_job(ctx, claimed, job_id)
    except OptionRejected as exc:  # checked at submit time; only a changed limit gets here
        rejected = ImageRejected("unsupported_format", exc.message)
        rejected.code = "invalid_option"
        raise rejected from None


def _segment_job(ctx: WorkerContext, claimed: Claim, job_id: str) -> Segmentation:
    decoded = _decode(ctx, claimed)
    if decoded.prepared is not None:  # PNG, JPEG, TIFF, a 2-D DICOM (whose header is kept for DICOM SEG output)
        result = segment_prepared(
            decoded.prepared, claimed.prompts, settings=ctx.settings, batcher=ctx.batcher, job_id=job_id,
            attempt=claimed.attempt,
        )
        return result if decoded.medical is None else dataclasses.replace(result, medical=decoded.medical)
    assert decoded.volume is not None
    stack = decoded.volume.stack()
    if stack.encode_nifti is not None:
        return _segment_3d(ctx, claimed, stack, job_id)
    return _segment_slices(ctx, claimed, stack, job_id)


def _decode(ctx: WorkerContext, claimed: Claim) -> DecodedInput:
    """The job's input decoded in a decode process, within its memory and time budget (over it:
    ``image_too_complex``, the job fails); a small plain PNG (the common case) in this thread."""
    if ctx.decoder is None or decodes_inline(claimed.image):
        return decode_input(claimed.image, claimed.options, ctx.settings)
    return ctx.decoder.call(decode_input, claimed.image, claimed.options, ctx.settings, nbytes=len(claimed.image))


class Progress:
    """``jobs.progress`` of one attempt; ``report`` is False once the job is no longer ours."""

    def __init__(self, ctx: WorkerContext, claimed: Claim, total: int) -> None:
        self._ctx, self._claimed, self.total = ctx, claimed, total

    def report(self, done: int) -> bool:
        stmt = medical_repo.progress_stmt(self._claimed.job_id, self._claimed.attempt, done=done, total=self.total)
        with self._ctx.engine.begin() as conn:
            # No job-changed notification: Prefer: wait returns on terminal states only; a poll sees progress.
            return bool(conn.execute(stmt).rowcount == 1)


def _request_id(job_id: str, attempt: int, number: int) -> str:
    # The first request of an attempt has the 2-D job's id; the others are derived the same way.
    if number == 0:
        return call_id(job_id, attempt)
    return str(uuid.uuid5(CALL_ID_NAMESPACE, f"{job_id}:{attempt}:{number}"))


def _segment_slices(ctx: WorkerContext, claimed: Claim, stack: inputs.SliceStack, job_id: str) -> Segmentation:
    settings, prompts = ctx.settings, claimed.prompts
    slices, height, width = stack.values.shape[:3]
    packed = np.zeros((len(prompts), slices, height, (width + 7) // 8), np.uint8)
    per_request = max(1, min(settings.volume_rows_per_request, settings.volume_max_masks_per_request // len(prompts)))
    progress = Progress(ctx, claimed, len(stack.indices))
    calls: list[ScoreResult] = []
    labels: list[Counter[str]] = [Counter() for _ in prompts]
    geometry_params: dict[str, Any] = {}
    owned = progress.report(0)
    for number, start in enumerate(range(0, len(stack.indices), per_request)):
        if not owned:
            log.info("job %s attempt %d: no longer ours, stopping the volume", job_id, claimed.attempt)
            break
        chunk = stack.indices[start:start + per_request]
        prepared = [
            imaging.prepare_pixels(
                stack.slice_uint8(k), {}, target=settings.endpoint_image_size,
                png_compress_level=settings.endpoint_png_compress_level,
            )
            for k in chunk
        ]
        call = ctx.client.score(
            [ScoreRow(image_png=p.png, prompts=prompts) for p in prepared], job_id=job_id,
            client_request_id=_request_id(job_id, claimed.attempt, number),
        )
        calls.append(call)
        for k, item, row in zip(chunk, prepared, call.rows, strict=True):
            binary = masks.masks_to_original(row.masks, item.geometry)
            packed[:, k] = np.packbits(binary, axis=-1)
            for i, label in enumerate(row.labels):
                labels[i][label] += 2 if binary[i].any() else 1  # slices that show the target count double
        geometry_params = {k: v for k, v in prepared[0].params.items() if k != "source"}
        owned = progress.report(start + len(chunk))
    provenance = _provenance(settings, calls, MODEL_2D, settings.endpoint_deployment, stack, stack.source)
    provenance["preprocessing"].update(geometry_params, rows_per_request=per_request)
    names = [c.most_common(1)[0][0] if c else "" for c in labels]
    return _result(stack, prompts, names, packed, width, height, provenance)


def _segment_3d(ctx: WorkerContext, claimed: Claim, stack: inputs.SliceStack, job_id: str) -> Segmentation:
    settings, prompts = ctx.settings, claimed.prompts
    assert stack.encode_nifti is not None
    nifti_bytes = stack.encode_nifti()
    client = ctx.client_3d
    if client is None:
        raise EndpointNotFound("the MedImageParse 3D endpoint is not configured (MEDPARSE_ENDPOINT_3D_SCORING_URI)")
    progress = Progress(ctx, claimed, 1)
    progress.report(0)
    call = client.score(
        [ScoreRow(image_png=nifti_bytes, prompts=prompts)], job_id=job_id,
        client_request_id=_request_id(job_id, claimed.attempt, 0),
    )
    row = call.rows[0]
    shape = stack.shape
    if row.masks.shape == shape:  # a label map: label k + 1 is prompt k
        per_prompt = np.stack([row.masks == k + 1 for k in range(len(prompts))])
    elif row.masks.shape == (len(prompts), *shape):  # the image_features variant: probabilities
        per_prompt = row.masks >= masks.THRESHOLD
    else:
        raise EndpointBadResponse(f"the 3-D model answered a volume of {list(row.masks.shape)} for {list(shape)}")
    slice_major = np.moveaxis(per_prompt, 1 + stack.slice_axis, 1)
    packed = np.packbits(slice_major, axis=-1)
    progress.report(1)
    source = stack.source_with({"method": "none", "by": "the model"})
    provenance = _provenance(settings, [call], MODEL_3D, settings.endpoint_3d_deployment, stack, source)
    provenance["preprocessing"]["sent"] = "the NIfTI volume (.nii.gz)"
    height, width = stack.slice_shape
    return _result(stack, prompts, row.labels, packed, width, height, provenance)


def _provenance(
    settings: Any, calls: list[ScoreResult], model: str, deployment: str | None, stack: inputs.SliceStack,
    source: dict[str, Any],
) -> dict[str, Any]:
    return {
        "model": model,
        "deployment": deployment,
        "endpoint_client_request_id": calls[0].client_request_id if calls else None,
        "endpoint_server_request_id": calls[0].server_request_id if calls else None,
        "endpoint_client_request_ids": [c.client_request_id for c in calls],
        "endpoint_server_request_ids": [c.server_request_id for c in calls],
        "endpoint_calls": len(calls),
        "endpoint_http_attempts": sum(c.attempts for c in calls),
        "endpoint_seconds": round(sum(c.seconds for c in calls), 4),
        "preprocessing": {"source": source},
        "threshold": masks.THRESHOLD,
        "mask_encoding": volumes.VOLUME_SUMMARY_ENCODING,
        "volume_encoding": volumes.VOLUME_ENCODING,
        "slices": {"axis": stack.slice_axis, "segmented": len(stack.indices), "of": int(stack.values.shape[0])},
        "software_version": __version__,
    }


def _result(
    stack: inputs.SliceStack, prompts: list[str], labels: list[str], packed: np.ndarray, width: int, height: int,
    provenance: dict[str, Any],
) -> Segmentation:
    stored = []
    for index, (prompt, label) in enumerate(zip(prompts, labels, strict=True)):
        mask = np.unpackbits(packed[index], axis=-1, count=width)
        area, bbox = volumes.summary(mask, stack.slice_axis)
        stored.append(StoredMask(
            index=index, prompt=prompt, label=label, area_px=area, bbox=bbox, height=height, width=width, data=b"",
        ))
    record = dataclasses.replace(
        stack.record, volume_shape=list(stack.shape), slice_axis=stack.slice_axis,
        encoding=volumes.VOLUME_ENCODING, data=volumes.encode_packed(packed),
    )
    return Segmentation(
        width=width, height=height, masks=stored, provenance=provenance, medical=dataclasses.asdict(record)
    )
