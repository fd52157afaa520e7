"""``POST /score``: the scoring route, with the endpoint's checks in the order Azure ML applies them.

Front end first (auth 401, routing 404, rate limit 429, pending-request limit 429), then the deployment:
a request waits for one of ``capacity`` model slots, runs for the simulated latency (the real decode and
segmentation time counts towards it) and answers 408 when queueing plus latency would pass the timeout.
"""

from __future__ import annotations

import asyncio
import random

from aiohttp import web

from emulator.auth import may_score
from emulator.config import EmulatorConfig
from emulator.faults import FAULT_MESSAGES, IMMEDIATE_FAULTS, draw_fault, hang, sample_latency_s
from emulator.protocol import ModelInputError, ScoringLimits, score_body
from emulator.score3d import Scoring3DLimits, score3d_body
from emulator.state import CONFIG, EXECUTOR, STATE, EmulatorState

DEPLOYMENT_HEADER = "azureml-model-deployment"
MODEL_ERROR_STATUS_HEADER = "ms-azureml-model-error-statuscode"
MODEL_ERROR_REASON_HEADER = "ms-azureml-model-error-reason"
INJECTED_FAULT_HEADER = "x-emulator-injected-fault"
#: which model a scoring request went to: "2d", or "3d" for a deployment in config.deployments_3d
MODEL_KIND = web.RequestKey("emulator_model_kind", str)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"message": message}, status=status, headers=headers)


def model_error(inner_status: int, reason: str) -> web.Response:
    """424: the model container answered ``inner_status``; the reason travels in a (one-line) header."""
    one_line = " ".join(reason.split())[:500]
    headers = {MODEL_ERROR_STATUS_HEADER: str(inner_status), MODEL_ERROR_REASON_HEADER: one_line}
    return error_response(424, f"Model returned status {inner_status}: {one_line}", headers)


def injected_fault(status: int) -> web.Response:
    if status == 424:
        response = model_error(500, FAULT_MESSAGES[424])
    else:
        response = error_response(status, FAULT_MESSAGES[status])
    response.headers[INJECTED_FAULT_HEADER] = "1"
    return response


def pick_deployment(requested: str | None, deployments: dict[str, int], rng: random.Random) -> str | None:
    """The header pins a deployment whatever its weight; otherwise the traffic split decides."""
    if requested is not None:
        return requested if requested in deployments else None
    names = [name for name, weight in deployments.items() if weight > 0]
    if not names:
        return None
    return rng.choices(names, weights=[deployments[name] for name in names])[0]


async def score(request: web.Request) -> web.Response:
    config, state = request.app[CONFIG], request.app[STATE]
    if not may_score(request, config, state.tokens):
        return error_response(401, "Unauthorized: missing, invalid or expired bearer credential")
    requested = request.headers.get(DEPLOYMENT_HEADER)
    three_d = requested is not None and requested in config.deployments_3d  # emulator/score3d.py
    deployment = requested if three_d else pick_deployment(requested, config.deployments, state.rng)
    request[MODEL_KIND] = "3d" if three_d else "2d"
    if deployment is None:
        return error_response(404, "No valid deployment to route to (unknown name or no positive weight)")
    state.stats.deployment_counts[deployment] += 1
    response = await _admit(request, config, state)
    response.headers[DEPLOYMENT_HEADER] = deployment
    return response


async def _admit(request: web.Request, config: EmulatorConfig, state: EmulatorState) -> web.Response:
    if not state.rate_limiter.allow(config.rate_limit_rps):
        return error_response(429, "Rate-limited: the endpoint's requests-per-second limit was exceeded")
    if config.hang_rate > 0 and state.rng.random() < config.hang_rate:
        return await hang(request, config.hang_mode, config.hang_trickle_interval_s)
    fault = draw_fault(state.rng, config.fault_rates)
    if fault in IMMEDIATE_FAULTS:
        return injected_fault(fault)
    if state.in_flight >= config.pending_limit:
        return error_response(429, "Too many pending requests")
    state.enter()
    try:
        return await _queue_and_run(request, config, state, fault)
    finally:
        state.leave()


async def _queue_and_run(
    request: web.Request, config: EmulatorConfig, state: EmulatorState, fault: int | None
) -> web.Response:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.request_timeout_ms / 1000.0
    body = await request.read()
    try:
        async with asyncio.timeout_at(deadline):
            await state.gpu.acquire(lambda: config.capacity)
    except TimeoutError:
        return error_response(408, "Request timed out: queued beyond request_timeout_ms")
    try:
        return await _run_model(request, config, state, fault, body, deadline)
    finally:
        await state.gpu.release()


async def _run_model(
    request: web.Request,
    config: EmulatorConfig,
    state: EmulatorState,
    fault: int | None,
    body: bytes,
    deadline: float,
) -> web.Response:
    loop = asyncio.get_running_loop()
    started = loop.time()
    latency = sample_latency_s(state.rng, config.latency_ms, config.latency_jitter_ms)
    if started + latency > deadline:
        await asyncio.sleep(max(0.0, deadline - started))
        return error_response(408, "Request timed out: model execution exceeded request_timeout_ms")
    if fault is not None:
        await asyncio.sleep(latency)
        return injected_fault(fault)
    limits = ScoringLimits(config.size_mode, config.allow_jpeg, config.max_rows)
    try:
        if request.get(MODEL_KIND) == "3d":
            limits_3d = Scoring3DLimits(config.output_3d)
            scored = await loop.run_in_executor(request.app[EXECUTOR], score3d_body, body, limits_3d)
        else:
            scored = await loop.run_in_executor(request.app[EXECUTOR], score_body, body, limits)
    except ModelInputError as exc:
        return model_error(400, str(exc))
    await asyncio.sleep(max(0.0, started + latency - loop.time()))
    if loop.time() > deadline:
        return error_response(408, "Request timed out: model execution exceeded request_timeout_ms")
    state.stats.rows_scored += scored.rows
    state.stats.prompts_scored += scored.prompts
    return web.Response(body=scored.body, content_type="application/json")
