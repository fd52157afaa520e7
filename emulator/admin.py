"""Admin API for tests: observe what the emulator saw and turn its knobs while it runs.

- ``GET /_emulator/stats``: scoring requests by status, rows and prompts scored, in-flight now and at most,
  requests per deployment, and the ``x-ms-client-request-id`` values seen.
- ``GET /_emulator/config``: the current runtime knobs.
- ``POST /_emulator/config``: a JSON object patching runtime knobs (see ``config.RUNTIME_KNOBS``), plus
  ``"reset_stats": true`` to zero the counters. Invalid patches change nothing and get 400.

All need ``Authorization: Bearer <key>`` with one of the configured keys.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from emulator.auth import may_administer
from emulator.config import RUNTIME_KNOBS, EmulatorConfig, apply_runtime_patch
from emulator.state import CONFIG, STATE

STATS_PATH = "/_emulator/stats"
CONFIG_PATH = "/_emulator/config"


def _refuse(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


def runtime_view(config: EmulatorConfig) -> dict[str, Any]:
    view = {name: getattr(config, name) for name in sorted(RUNTIME_KNOBS)}
    view["fault_rates"] = {str(status): rate for status, rate in sorted(config.fault_rates.items())}
    return view


def _authorized(request: web.Request) -> bool:
    return may_administer(request, request.app[CONFIG], request.app[STATE].tokens)


async def get_stats(request: web.Request) -> web.Response:
    if not _authorized(request):
        return _refuse(401, "Unauthorized")
    state = request.app[STATE]
    return web.json_response(state.stats.to_json(in_flight=state.in_flight, on_gpu=state.gpu.busy))


async def get_config(request: web.Request) -> web.Response:
    if not _authorized(request):
        return _refuse(401, "Unauthorized")
    return web.json_response({"config": runtime_view(request.app[CONFIG])})


async def patch_config(request: web.Request) -> web.Response:
    if not _authorized(request):
        return _refuse(401, "Unauthorized")
    try:
        patch = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _refuse(400, "body must be a JSON object")
    if not isinstance(patch, dict):
        return _refuse(400, "body must be a JSON object")
    reset = patch.pop("reset_stats", False)
    if not isinstance(reset, bool):
        return _refuse(400, "reset_stats must be true or false")
    config, state = request.app[CONFIG], request.app[STATE]
    try:
        apply_runtime_patch(config, patch)
    except ValueError as exc:
        return _refuse(400, str(exc))
    # Requests queued for a model slot re-check the (possibly larger) capacity.
    await state.gpu.capacity_changed()
    if reset:
        state.reset_stats()
    return web.json_response({"config": runtime_view(config)})


def add_admin_routes(app: web.Application) -> None:
    app.router.add_get(STATS_PATH, get_stats)
    app.router.add_get(CONFIG_PATH, get_config)
    app.router.add_post(CONFIG_PATH, patch_config)
