"""The synchronous scoring client the workers call from their threads.

One ``EndpointClient`` per process, shared by all worker threads: it holds one httpx connection
pool, one credential and no per-call state. Each call gets one ``x-ms-client-request-id`` for all
its attempts; it is logged with the job id so a job can be found in the endpoint's traffic log.
Keys, tokens and image bytes are never logged.

Every HTTP attempt has a wall-clock deadline (``endpoint_request_deadline_s``) besides httpx's
per-read timeouts, which an endpoint trickling its answer would defeat; and when the caller set an
overall deadline (the job's time limit, ``medparse.http_deadline.deadline_at``) no attempt, backoff
or wait for an in-flight slot runs past it: the call ends with ``JobTimeLimitExceeded``.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from types import TracebackType

import httpx

from medparse import http_deadline
from medparse.endpoint.auth import TokenProvider, make_token_provider
from medparse.endpoint.errors import EndpointError, JobTimeLimitExceeded
from medparse.endpoint.limiter import InFlightLimiter, InFlightSlotTimeout, in_flight_limit
from medparse.endpoint.protocol import RowResult, ScoreResult, ScoreRow, build_request_body, parse_response
from medparse.endpoint.retry import Failure, FailureKind, RetryPolicy, RetryState, failure_from_status
from medparse.settings import Settings

log = logging.getLogger(__name__)

CLIENT_REQUEST_ID_HEADER = "x-ms-client-request-id"
DEPLOYMENT_HEADER = "azureml-model-deployment"
_SERVER_REQUEST_ID_HEADERS = ("x-request-id", "x-ms-request-id")
#: How much of an error body goes into a message: enough for the model's reason, not a whole page.
_ERROR_EXCERPT_CHARS = 300


class EndpointClient:
    """Scores rows on the MedImageParse endpoint with retries, auth refresh and the global in-flight cap.

    Args:
        settings: ``endpoint_*`` fields configure URI, auth, timeouts and retries.
        limiter: the in-flight cap; one slot is held per HTTP attempt, none while backing off.
        credential: bearer provider; built from ``settings`` when omitted (and then closed by ``close``).
        transport: an httpx transport, for tests; by default a pooled HTTP/1.1 transport without retries.
        policy, sleep, clock, rng: injectable retry policy and time, so tests need not wait.
        parser: turns a 200 body into row results; the 3-D model's (``medparse.endpoint.protocol3d``)
            differs from the 2-D default.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        limiter: InFlightLimiter,
        credential: TokenProvider | None = None,
        transport: httpx.BaseTransport | None = None,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        parser: Callable[[bytes, Sequence[ScoreRow]], list[RowResult]] = parse_response,
    ) -> None:
        uri = settings.endpoint_scoring_uri
        if not uri or not uri.startswith(("https://", "http://")):
            raise ValueError("MEDPARSE_ENDPOINT_SCORING_URI must be the endpoint's http(s) scoring URI")
        self._uri = uri
        self._limiter = limiter
        self._owns_credential = credential is None
        self._tokens = credential if credential is not None else make_token_provider(settings)
        self._policy = policy or RetryPolicy.from_settings(settings)
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self._parser = parser
        self._connect_timeout_s = settings.endpoint_connect_timeout_s
        self._read_timeout_s = settings.endpoint_read_timeout_s
        self._request_deadline_s = settings.endpoint_request_deadline_s or (
            settings.endpoint_connect_timeout_s + settings.endpoint_read_timeout_s + 5.0
        )
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if settings.endpoint_deployment:
            self._headers[DEPLOYMENT_HEADER] = settings.endpoint_deployment
        # Every request holds a global slot, so this process never has more connections open than that.
        pool = in_flight_limit(settings)
        limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
        self._http = httpx.Client(
            transport=transport or http_deadline.deadline_transport(limits=limits, retries=0),
            follow_redirects=False,
        )

    def score(
        self, rows: Sequence[ScoreRow], *, job_id: str, client_request_id: str | None = None
    ) -> ScoreResult:
        """Send ``rows`` in one request and return their masks and labels, in order.

        ``client_request_id`` (default: a fresh uuid) is sent as ``x-ms-client-request-id`` on
        every HTTP attempt of this call, so the endpoint's traffic log ties them to one call.

        Raises:
            EndpointError: a subclass naming why (see ``medparse.endpoint.errors``).
        """
        body = build_request_body(rows)
        client_request_id = client_request_id or str(uuid.uuid4())
        started = self._clock()
        state = self._policy.start(started, rng=self._rng, client_request_id=client_request_id)
        log.info(
            "endpoint call job_id=%s client_request_id=%s rows=%d prompts=%d request_bytes=%d",
            job_id, client_request_id, len(rows), sum(len(r.prompts) for r in rows), len(body),
        )
        refresh = False
        while True:
            outcome = self._attempt(body, state, refresh_auth=refresh)
            if isinstance(outcome, httpx.Response):
                break
            decision = state.on_failure(outcome, self._clock())
            if decision.error is not None:
                log.warning(
                    "endpoint call failed job_id=%s client_request_id=%s attempts=%d code=%s: %s",
                    job_id, client_request_id, state.attempts, decision.error.code, outcome.describe(),
                )
                raise decision.error
            log.warning(
                "endpoint attempt %d failed job_id=%s client_request_id=%s: %s; retrying in %.2f s",
                state.attempts, job_id, client_request_id, outcome.describe(), decision.delay_s,
            )
            refresh = decision.refresh_auth
            if decision.delay_s > 0:
                left = http_deadline.remaining_s()
                if left is not None and left <= decision.delay_s:
                    raise self._out_of_job_time(state, f"before retry {state.attempts + 1}")
                self._sleep(decision.delay_s)

        server_request_id = _server_request_id(outcome)
        try:
            results = self._parser(outcome.content, rows)
        except EndpointError as exc:
            exc.attempts, exc.client_request_id, exc.status = state.attempts, client_request_id, 200
            log.warning(
                "endpoint answer rejected job_id=%s client_request_id=%s server_request_id=%s: %s",
                job_id, client_request_id, server_request_id, exc.message,
            )
            raise
        seconds = self._clock() - started
        log.info(
            "endpoint call ok job_id=%s client_request_id=%s server_request_id=%s attempts=%d seconds=%.3f",
            job_id, client_request_id, server_request_id, state.attempts, seconds,
        )
        return ScoreResult(
            rows=results,
            client_request_id=client_request_id,
            server_request_id=server_request_id,
            attempts=state.attempts,
            seconds=seconds,
        )

    def close(self) -> None:
        self._http.close()
        close = getattr(self._tokens, "close", None)
        if self._owns_credential and callable(close):
            close()

    def __enter__(self) -> EndpointClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _out_of_job_time(self, state: RetryState, when: str) -> JobTimeLimitExceeded:
        log.warning(
            "endpoint call stopped by the job's time limit client_request_id=%s attempts=%d (%s)",
            state.client_request_id, state.attempts, when,
        )
        return JobTimeLimitExceeded(
            f"the job reached its processing time limit while calling the endpoint ({when}, after "
            f"{state.attempts} attempt(s)); the endpoint may be hung or overloaded; try again later",
            attempts=state.attempts, client_request_id=state.client_request_id,
        )

    def _attempt(self, body: bytes, state: RetryState, *, refresh_auth: bool) -> httpx.Response | Failure:
        """One HTTP attempt under an in-flight slot: the 200 response, or what went wrong."""
        job_left = http_deadline.remaining_s()
        if job_left is not None and job_left <= 0:
            raise self._out_of_job_time(state, f"before attempt {state.attempts + 1}")
        try:
            bearer = self._tokens.bearer(force_refresh=refresh_auth)
        except EndpointError as exc:
            exc.attempts, exc.client_request_id = state.attempts, state.client_request_id
            raise
        headers = {
            **self._headers,
            "Authorization": f"Bearer {bearer}",
            CLIENT_REQUEST_ID_HEADER: state.client_request_id or "",
        }
        remaining = state.remaining_s(self._clock())
        if job_left is not None:
            remaining = min(remaining, job_left)
        if remaining <= 0:
            raise state.give_up(Failure(FailureKind.overloaded, detail="no time left"), "out of time")
        try:
            with self._limiter.slot(timeout=remaining):
                state.attempt_started()
                return self._post(body, headers, state)
        except InFlightSlotTimeout as exc:
            left = http_deadline.remaining_s()
            if left is not None and left <= 0:
                raise self._out_of_job_time(state, "waiting for a free in-flight slot") from None
            failure = Failure(FailureKind.overloaded, detail=str(exc))
            raise state.give_up(failure, "waiting for a free in-flight slot") from None

    def _post(self, body: bytes, headers: dict[str, str], state: RetryState) -> httpx.Response | Failure:
        # Never wait past the call's total budget, whatever the per-attempt timeouts say.
        remaining = max(0.001, state.remaining_s(self._clock()))
        timeout = httpx.Timeout(
            connect=min(self._connect_timeout_s, remaining),
            read=min(self._read_timeout_s, remaining),
            write=min(self._read_timeout_s, remaining),
            pool=min(self._connect_timeout_s, remaining),
        )
        deadline_s = min(self._request_deadline_s, remaining)
        attempt_started = time.monotonic()
        try:
            with http_deadline.deadline_in(deadline_s):
                response = self._http.post(self._uri, content=body, headers=headers, timeout=timeout)
        except httpx.TimeoutException as exc:
            job_left = http_deadline.remaining_s()
            if job_left is not None and job_left <= 0:
                raise self._out_of_job_time(state, f"during attempt {state.attempts}") from None
            if time.monotonic() - attempt_started >= deadline_s - 0.05:
                detail = f"no complete answer within the request deadline of {deadline_s:g} s ({type(exc).__name__})"
                return Failure(FailureKind.read_timeout, detail=detail)
            if isinstance(exc, httpx.ReadTimeout):
                return Failure(FailureKind.read_timeout, detail=f"no answer within {timeout.read:g} s ({exc})")
            return Failure(FailureKind.connection, detail=f"{type(exc).__name__}: {exc}")
        except httpx.RequestError as exc:  # refused, reset, protocol or decoding trouble
            return Failure(FailureKind.connection, detail=f"{type(exc).__name__}: {exc}")
        if response.status_code == 200:
            return response
        excerpt = response.content[:_ERROR_EXCERPT_CHARS].decode("utf-8", "replace").strip()
        failure = failure_from_status(response.status_code, response.headers, excerpt)
        server_id = _server_request_id(response)
        if server_id:
            failure = dataclasses.replace(failure, detail=f"{failure.detail} [server_request_id={server_id}]")
        return failure


def _server_request_id(response: httpx.Response) -> str | None:
    for name in _SERVER_REQUEST_ID_HEADERS:
        if value := response.headers.get(name):
            return value
    return None
