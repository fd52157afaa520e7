"""Use cases of a succeeded job's result: its masks (``/masks.npz``, ``/masks/{index}``) and every
output format (``/result?format=...``). Each one reads in one transaction, then renders in a decode
process (gateway/results/render.py) within its memory and time budget."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from db import jobs as repo
from db import medical as medical_repo
from db.job_record import Job, StoredMask
from gateway.deps import GatewayDeps, Store
from gateway.errors import BadQueryField, Conflict, JobNotFound, MaskNotFound, Unprocessable, decode_busy
from gateway.results import render
from gateway.tenancy import tenant_transaction
from medparse import imaging
from medparse.decode_pool import DecodeBusy, DecodeLimitExceeded
from medparse.medical.errors import OptionRejected

T = TypeVar("T")


@dataclass(frozen=True)
class Result:
    """One format of a job's result, and the provenance every answer carries."""

    rendered: render.Rendered
    provenance: dict[str, Any]


def _succeeded(job: Job | None, what: str) -> Job:
    if job is None:
        raise JobNotFound()
    if not job.succeeded:
        raise Conflict(f"the job is {job.status}; {what} exist once it succeeded", code="job_not_succeeded")
    return job


async def _in_decode_process(
    deps: GatewayDeps, tenant_id: uuid.UUID, what: str, func: Callable[..., T], *args: Any, nbytes: int
) -> T:
    """``func(*args)`` in a decode process: Busy when none is free in time, Unprocessable over its budget."""
    try:
        return await deps.decode_pool.run(func, *args, nbytes=nbytes, party=tenant_id)
    except DecodeBusy as exc:
        raise decode_busy(exc.retry_after_s, exc.message) from None
    except DecodeLimitExceeded as exc:
        raise Unprocessable(f"{what}: {exc.message}", code=exc.code) from None


async def load_masks(store: Store, tenant_id: uuid.UUID, job_id: uuid.UUID, index: int | None) -> list[StoredMask]:
    """The stored 2-D masks of a succeeded job (one, or all in prompt order)."""
    async with tenant_transaction(store.engine, tenant_id) as conn:
        job = _succeeded(await repo.read_job(conn, tenant_id, job_id), "masks")
        stored = await repo.read_stored_masks(conn, job_id, index)
    if not stored:
        raise MaskNotFound()
    if job.is_volume:  # a volume's masks are 3-D: served by ``get_result``
        raise Conflict(
            "the job's masks are volumes; use result?format=npz or result?format=nifti", code="volume_result"
        )
    return stored


async def mask_png(deps: GatewayDeps, tenant_id: uuid.UUID, job_id: uuid.UUID, index: int) -> bytes:
    """One mask of a succeeded 2-D job as a 0/255 PNG."""
    stored = await load_masks(deps, tenant_id, job_id, index)
    # Decoding and encoding a mask of up to max_image_pixels: in a decode process, within its budget.
    return await _in_decode_process(
        deps, tenant_id, "masks", render.mask_png_of, stored, nbytes=render.stored_bytes(stored)
    )


async def masks_npz(deps: GatewayDeps, tenant_id: uuid.UUID, job_id: uuid.UUID) -> bytes:
    """All masks of a succeeded 2-D job as one .npz."""
    stored = await load_masks(deps, tenant_id, job_id, None)
    return await _in_decode_process(
        deps, tenant_id, "masks", render.masks_npz_of, stored, nbytes=render.stored_bytes(stored)
    )


async def load_result(store: Store, tenant_id: uuid.UUID, job_id: uuid.UUID, *, need_input: bool) -> render.Loaded:
    """What rendering a succeeded job's result reads, in one transaction."""
    async with tenant_transaction(store.engine, tenant_id) as conn:
        job = _succeeded(await repo.read_job(conn, tenant_id, job_id), "results")
        summaries = await repo.read_mask_summaries(conn, job_id)
        medical = await medical_repo.read_medical(conn, tenant_id, job_id)
        stored = None if job.is_volume else await repo.read_stored_masks(conn, job_id)
        image = await repo.read_input(conn, job_id) if need_input else None
    if stored is None and (medical is None or medical.data is None):
        raise Conflict("the job's volume masks are missing", code="result_unavailable")
    return render.Loaded(job, summaries, stored, medical, image)


async def get_result(
    deps: GatewayDeps, tenant_id: uuid.UUID, job_id: uuid.UUID, fmt: str, mask: int | None, slice_: int | None
) -> Result:
    """One output format of a succeeded job (``fmt`` one of ``render.FORMATS``)."""
    loaded = await load_result(deps, tenant_id, job_id, need_input=fmt == "overlay")
    if slice_ is not None and not loaded.job.is_volume:  # never ignored: the caller meant something
        raise BadQueryField("slice", "applies to volume results only; this job's result is 2-D")
    # Every format decodes whole masks (a volume's are up to max_volume_voxels per prompt) and the overlay
    # decodes the untrusted input again: in a decode process, within its memory and time budget.
    try:
        rendered = await _in_decode_process(
            deps, tenant_id, "result", render.render, loaded, fmt, mask, slice_, deps.settings,
            nbytes=loaded.stored_bytes,
        )
    except (imaging.ImageRejected, OptionRejected) as exc:  # the input no longer reads under today's limits
        message = exc.message if isinstance(exc, imaging.ImageRejected) else f"{exc.field}: {exc.message}"
        raise Conflict(f"result: the job's input cannot be read now: {message}", code="result_unavailable") from None
    return Result(rendered, loaded.provenance)
