"""Application factory of the MedImageParse endpoint emulator.

Routes: ``GET /`` (liveness), ``POST /score``, the managed-identity token route when an identity header
is configured, and the admin API under ``/_emulator/``. Anything else is 404, a wrong method 405.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from multidict import CIMultiDict

from emulator.admin import add_admin_routes
from emulator.config import EmulatorConfig
from emulator.identity import MSI_TOKEN_PATH, managed_identity_token
from emulator.score import score
from emulator.state import CONFIG, EXECUTOR, STATE, EmulatorState

BANNER = (
    "MedImageParse endpoint EMULATOR - this is not the MedImageParse model. Its masks come from classical "
    "image processing (Otsu threshold and connected components), not from the model."
)
SCORE_PATH = "/score"
REQUEST_ID_HEADER = "x-request-id"
CLIENT_REQUEST_ID_HEADER = "x-ms-client-request-id"
#: Azure documents no request size limit for managed endpoints; a 256-row request of 1024x1024 PNGs is
#: a few hundred MB, so the cap only guards the emulator against runaway clients.
MAX_BODY_BYTES = 512 * 1024 * 1024

log = logging.getLogger(__name__)
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def liveness(request: web.Request) -> web.Response:
    return web.Response(text=BANNER + "\n")


def _stamp(headers: CIMultiDict[str], request_id: str, client_request_id: str | None) -> None:
    headers[REQUEST_ID_HEADER] = request_id
    if client_request_id is not None:
        headers[CLIENT_REQUEST_ID_HEADER] = client_request_id


@web.middleware
async def correlation_ids(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Give every response an ``x-request-id``, echo ``x-ms-client-request-id``, count /score outcomes."""
    state = request.app[STATE]
    scoring = request.path == SCORE_PATH
    request_id = str(uuid.uuid4())
    client_request_id = request.headers.get(CLIENT_REQUEST_ID_HEADER)
    if scoring and client_request_id is not None:
        state.record_client_request_id(client_request_id)
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # 404 / 405 from the router
        _stamp(exc.headers, request_id, client_request_id)
        if scoring:
            state.stats.status_counts[exc.status] += 1
        raise
    except Exception:
        if scoring:
            state.stats.status_counts[500] += 1
        log.exception("unhandled error, request id %s", request_id)
        raise
    _stamp(response.headers, request_id, client_request_id)
    if scoring:
        state.stats.status_counts[response.status] += 1
    return response


async def _model_threads(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    log.warning(BANNER)
    log.info(
        "emulator config: auth_mode=%s deployments=%s capacity=%d (pending limit %d) latency_ms=%.0f "
        "request_timeout_ms=%d size_mode=%s managed_identity_route=%s",
        config.auth_mode,
        config.deployments,
        config.capacity,
        config.pending_limit,
        config.latency_ms,
        config.request_timeout_ms,
        config.size_mode,
        MSI_TOKEN_PATH if config.identity_header else "off",
    )
    workers = min(4, os.cpu_count() or 1)
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="emulator-model")
    app[EXECUTOR] = executor
    yield
    executor.shutdown(wait=True, cancel_futures=True)


def create_emulator_app(config: EmulatorConfig) -> web.Application:
    app = web.Application(middlewares=[correlation_ids], client_max_size=MAX_BODY_BYTES)
    app[CONFIG] = config
    app[STATE] = EmulatorState(config)
    app.cleanup_ctx.append(_model_threads)
    app.router.add_get("/", liveness)
    app.router.add_post(SCORE_PATH, score)
    if config.identity_header:
        app.router.add_get(MSI_TOKEN_PATH, managed_identity_token)
    add_admin_routes(app)
    return app
