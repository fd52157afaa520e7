"""When to retry an endpoint call, how long to wait, and which error to raise when we stop.

Pure policy: no HTTP, no sleeping. The client turns each failed attempt into a ``Failure``, asks
``RetryState.on_failure`` for a ``Decision`` and carries it out. Time comes in as an argument, so
tests drive it with a fake clock.

Rules (protocol notes, section 6 and 9):
- connection errors, read timeouts, 429 (``Retry-After`` honoured, capped), 500/502/503/504:
  retried with full-jitter exponential backoff;
- 424 retried only when ``ms-azureml-model-error-statuscode`` is 5xx (or missing), at most
  ``max_424_attempts`` times; 424 with an inner 4xx is the model rejecting the input;
- 401/403: refresh the credential once and retry at once; a second one fails;
- 408: the model ran past the deployment's request_timeout_ms, surfaced at once;
- 404 and other 4xx: never retried;
- everything is bounded by ``max_attempts`` and ``max_total_s``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum

from medparse.endpoint.errors import (
    EndpointAuthFailed,
    EndpointBadResponse,
    EndpointError,
    EndpointNotFound,
    EndpointRejectedInput,
    EndpointTimeout,
    EndpointUnavailable,
)
from medparse.settings import Settings

MODEL_STATUS_HEADER = "ms-azureml-model-error-statuscode"
MODEL_REASON_HEADER = "ms-azureml-model-error-reason"
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


class FailureKind(StrEnum):
    #: refused, reset or dropped connection, or a broken HTTP exchange: retried
    connection = "connection"
    #: no answer within our read timeout: retried; exhausting them is a timeout
    read_timeout = "read_timeout"
    #: 429, 500, 502, 503, 504: retried
    overloaded = "overloaded"
    #: 424 whose inner model status is 5xx (or absent): retried within the 424 budget
    model_failed = "model_failed"
    #: 424 with an inner 4xx, 400, 405, 413, 422 ...: the input must change
    rejected = "rejected"
    #: 408: the model ran past request_timeout_ms
    timeout = "timeout"
    #: 401, 403
    auth = "auth"
    #: 404
    not_found = "not_found"
    #: a status the protocol does not define (3xx, 501 ...)
    unexpected = "unexpected"


@dataclass(frozen=True)
class Failure:
    """One failed HTTP attempt."""

    kind: FailureKind
    status: int | None = None
    #: exception text, or the model's error reason, or an excerpt of the error body
    detail: str = ""
    #: inner status of a 424 (``ms-azureml-model-error-statuscode``)
    model_status: int | None = None
    #: seconds from ``Retry-After``
    retry_after_s: float | None = None

    def describe(self) -> str:
        head = f"HTTP {self.status}" if self.status is not None else self.kind.value.replace("_", " ")
        if self.model_status is not None:
            head += f" (model status {self.model_status})"
        return f"{head}: {self.detail}" if self.detail else head


def failure_from_status(status: int, headers: Mapping[str, str], body_excerpt: str = "") -> Failure:
    """Classify a non-200 answer; ``headers`` is case-insensitive (httpx) or has lower-case names."""
    retry_after = parse_retry_after(headers.get("retry-after"))
    if status == 424:
        model_status = _int_or_none(headers.get(MODEL_STATUS_HEADER))
        reason = headers.get(MODEL_REASON_HEADER) or body_excerpt
        # No inner status: the container failed without saying why (probe failures come as 424 too).
        inner_4xx = model_status is not None and model_status < 500
        kind = FailureKind.rejected if inner_4xx else FailureKind.model_failed
        return Failure(kind, status, reason, model_status, retry_after)
    if status in RETRYABLE_STATUSES:
        kind = FailureKind.overloaded
    elif status == 408:
        kind = FailureKind.timeout
    elif status in (401, 403):
        kind = FailureKind.auth
    elif status == 404:
        kind = FailureKind.not_found
    elif 400 <= status < 500:
        kind = FailureKind.rejected
    else:
        kind = FailureKind.unexpected
    return Failure(kind, status, body_excerpt, None, retry_after)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds()) if when.tzinfo else None


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class Decision:
    """Wait ``delay_s`` (refreshing the credential if asked) and try again, or raise ``error``."""

    delay_s: float = 0.0
    refresh_auth: bool = False
    error: EndpointError | None = None

    @property
    def retry(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    max_total_s: float = 300.0
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0
    max_424_attempts: int = 2

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_attempts=settings.endpoint_max_attempts,
            max_total_s=settings.endpoint_max_total_s,
            backoff_min_s=settings.endpoint_backoff_min_s,
            backoff_max_s=settings.endpoint_backoff_max_s,
            max_424_attempts=settings.endpoint_max_424_attempts,
        )

    def backoff_s(self, retry_index: int, rng: random.Random) -> float:
        """Full jitter: uniform between the floor and min(cap, floor * 2**retry_index)."""
        ceiling = min(self.backoff_max_s, self.backoff_min_s * 2.0 ** min(retry_index, 62))
        return rng.uniform(self.backoff_min_s, max(self.backoff_min_s, ceiling))

    def start(
        self, now: float, *, rng: random.Random | None = None, client_request_id: str | None = None
    ) -> RetryState:
        return RetryState(self, started=now, rng=rng or random.Random(), client_request_id=client_request_id)


@dataclass
class RetryState:
    """The retry bookkeeping of one call: attempts made, 424s seen, whether auth was refreshed."""

    policy: RetryPolicy
    started: float
    rng: random.Random = field(default_factory=random.Random)
    client_request_id: str | None = None
    attempts: int = 0
    retries: int = 0
    model_failures: int = 0
    auth_refreshed: bool = False

    def remaining_s(self, now: float) -> float:
        return self.policy.max_total_s - (now - self.started)

    def attempt_started(self) -> None:
        self.attempts += 1

    def on_failure(self, failure: Failure, now: float) -> Decision:
        """Decide after a failed attempt (``attempt_started`` was called for it)."""
        final = self._final_error(failure)
        if final is not None:
            return Decision(error=final)
        if failure.kind is FailureKind.auth:
            # A refresh is worth exactly one immediate retry; no backoff, nothing is overloaded.
            self.auth_refreshed = True
            delay = 0.0
        else:
            delay = self._delay(failure)
        if self.attempts >= self.policy.max_attempts:
            return Decision(error=self._exhausted(failure, f"after {self.attempts} attempts"))
        if now + delay - self.started >= self.policy.max_total_s:
            budget = f"within endpoint_max_total_s={self.policy.max_total_s:g} s ({self.attempts} attempts)"
            return Decision(error=self._exhausted(failure, budget))
        self.retries += 1
        return Decision(delay_s=delay, refresh_auth=failure.kind is FailureKind.auth)

    def give_up(self, failure: Failure, why: str) -> EndpointError:
        """The error for stopping early for a reason outside the policy (e.g. no in-flight slot)."""
        return self._exhausted(failure, why)

    def _final_error(self, failure: Failure) -> EndpointError | None:
        kind = failure.kind
        if kind is FailureKind.model_failed:
            self.model_failures += 1
            if self.model_failures >= self.policy.max_424_attempts:
                return self._exhausted(failure, f"after {self.model_failures} model failures")
            return None
        if kind is FailureKind.auth:
            if not self.auth_refreshed:
                return None
            return self._error(
                EndpointAuthFailed,
                f"the endpoint refused our credential ({failure.describe()}) even after a refresh; check "
                "MEDPARSE_ENDPOINT_AUTH_MODE and MEDPARSE_ENDPOINT_KEY, or the identity's score permission "
                "on the endpoint",
                failure,
            )
        if kind is FailureKind.timeout:
            return self._error(
                EndpointTimeout,
                f"the model ran past the deployment's request_timeout_ms ({failure.describe()}); send fewer "
                "prompts or rows per request, or raise request_timeout_ms (at most 180000)",
                failure,
            )
        if kind is FailureKind.not_found:
            return self._error(
                EndpointNotFound,
                f"no deployment answers at this scoring URI ({failure.describe()}); check "
                "MEDPARSE_ENDPOINT_SCORING_URI, MEDPARSE_ENDPOINT_DEPLOYMENT and that a deployment "
                "has traffic",
                failure,
            )
        if kind is FailureKind.rejected:
            return self._error(
                EndpointRejectedInput,
                f"the model rejected the input ({failure.describe()}); fix the image or prompts",
                failure,
            )
        if kind is FailureKind.unexpected:
            return self._error(
                EndpointBadResponse, f"the endpoint answered with an undefined status ({failure.describe()})",
                failure,
            )
        return None

    def _delay(self, failure: Failure) -> float:
        if failure.retry_after_s is not None:
            return min(failure.retry_after_s, self.policy.backoff_max_s)
        return self.policy.backoff_s(self.retries, self.rng)

    def _exhausted(self, failure: Failure, why: str) -> EndpointError:
        if failure.kind is FailureKind.read_timeout:
            return self._error(
                EndpointTimeout,
                f"no answer within the read timeout, {why} ({failure.describe()}); the deployment may be "
                "overloaded, or endpoint_read_timeout_s is shorter than its request_timeout_ms",
                failure,
            )
        if failure.kind is FailureKind.auth:
            message = f"credential refused, {why} ({failure.describe()})"
            return self._error(EndpointAuthFailed, message, failure)
        return self._error(
            EndpointUnavailable,
            f"the endpoint kept failing, {why} (last: {failure.describe()}); it may be overloaded, "
            "scaling or down; try the job again later",
            failure,
        )

    def _error(self, cls: type[EndpointError], message: str, failure: Failure) -> EndpointError:
        return cls(
            message, status=failure.status, attempts=self.attempts, client_request_id=self.client_request_id
        )
