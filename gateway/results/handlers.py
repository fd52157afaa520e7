"""The result routes of a succeeded job: thin handlers (parse, call one use case, serialise).

``GET /v1/jobs/{job_id}/result?format=png|npz|rle|overlay|nifti|dicom-seg[&mask=i][&slice=k]``: one
route for every output format. ``mask`` picks one prompt's mask (default: all, or the first for
``png``); ``slice`` picks a volume's slice for ``png``/``overlay`` (default: the slice where the mask,
or all masks, cover the most voxels). Every answer carries the job's provenance in the body where the
format has room (gateway/results/render.py) and as a compact ``Medparse-Provenance`` header.

``GET /v1/jobs/{job_id}/masks.npz`` and ``/masks/{index}``: a 2-D job's masks (a volume's answer 409).
"""

from __future__ import annotations

from aiohttp import web

from gateway.http.auth import principal
from gateway.http.params import bounded_int, job_id_from
from gateway.http.problems import field_error, not_found
from gateway.jobs.schemas import INT32_MAX
from gateway.keys import DEPS
from gateway.results import services
from gateway.results.render import FORMATS, provenance_header


async def get_result(request: web.Request) -> web.Response:
    who = principal(request, "jobs:read")
    job_id = job_id_from(request)
    fmt = request.query.get("format", "")
    if fmt not in FORMATS:
        raise field_error("format", f"one of {', '.join(FORMATS)}", status=400)
    mask, slice_ = _int_param(request, "mask"), _int_param(request, "slice")
    if slice_ is not None and fmt not in ("png", "overlay"):
        raise field_error("slice", "applies to format=png and format=overlay only", status=400)
    result = await services.get_result(request.app[DEPS], who.tenant_id, job_id, fmt, mask, slice_)
    rendered = result.rendered
    headers = {
        "Content-Disposition": f'attachment; filename="{rendered.filename}"',
        "Medparse-Provenance": provenance_header(result.provenance),
        **rendered.headers,
    }
    return web.Response(body=rendered.body, content_type=rendered.content_type, headers=headers)


def _int_param(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    return bounded_int(raw, name, 0, INT32_MAX)


async def get_mask_png(request: web.Request) -> web.Response:
    who = principal(request, "jobs:read")
    raw = request.match_info["index"]
    # Mask indexes are int32 in the database: a larger (or non-ASCII) one names no mask.
    if not raw.isascii() or not raw.isdigit() or len(raw) > 10 or int(raw) > INT32_MAX:
        raise not_found("mask")
    body = await services.mask_png(request.app[DEPS], who.tenant_id, job_id_from(request), int(raw))
    return web.Response(body=body, content_type="image/png")


async def get_masks_npz(request: web.Request) -> web.Response:
    who = principal(request, "jobs:read")
    body = await services.masks_npz(request.app[DEPS], who.tenant_id, job_id_from(request))
    return web.Response(body=body, content_type="application/octet-stream")
