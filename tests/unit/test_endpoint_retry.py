from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from medparse.endpoint.errors import (
    EndpointAuthFailed,
    EndpointBadResponse,
    EndpointError,
    EndpointNotFound,
    EndpointRejectedInput,
    EndpointTimeout,
    EndpointUnavailable,
)
from medparse.endpoint.retry import (
    Decision,
    Failure,
    FailureKind,
    RetryPolicy,
    RetryState,
    failure_from_status,
    parse_retry_after,
)
from medparse.settings import Settings

POLICY = RetryPolicy(
    max_attempts=6, max_total_s=300.0, backoff_min_s=0.5, backoff_max_s=30.0, max_424_attempts=2
)
MODEL_STATUS = "ms-azureml-model-error-statuscode"
MODEL_REASON = "ms-azureml-model-error-reason"
CONNECTION = Failure(FailureKind.connection, detail="ConnectError: refused")
READ_TIMEOUT = Failure(FailureKind.read_timeout, detail="no answer")


def status(code: int, headers: dict[str, str] | None = None, body: str = "") -> Failure:
    return failure_from_status(code, headers or {}, body)


def fail(state: RetryState, failure: Failure, now: float = 0.0) -> Decision:
    state.attempt_started()
    return state.on_failure(failure, now)


def run_until_decided(state: RetryState, failure: Failure) -> tuple[int, EndpointError]:
    """Feed the same failure until the policy gives up; return (retries granted, the error)."""
    retries = 0
    while True:
        decision = fail(state, failure)
        if decision.error is not None:
            return retries, decision.error
        retries += 1


def test_policy_reads_its_bounds_from_settings() -> None:
    settings = Settings(
        endpoint_max_attempts=4,
        endpoint_max_total_s=12.0,
        endpoint_backoff_min_s=0.1,
        endpoint_backoff_max_s=2.0,
        endpoint_max_424_attempts=3,
    )

    assert RetryPolicy.from_settings(settings) == RetryPolicy(4, 12.0, 0.1, 2.0, 3)


@pytest.mark.parametrize("code", [429, 500, 502, 503, 504])
def test_overload_and_server_errors_are_retried_until_attempts_run_out(code: int) -> None:
    state = POLICY.start(0.0, client_request_id="cid-1")

    retries, error = run_until_decided(state, status(code))

    assert retries == POLICY.max_attempts - 1
    assert isinstance(error, EndpointUnavailable)
    assert error.code == "endpoint_unavailable" and error.transient
    assert error.status == code and error.attempts == POLICY.max_attempts
    assert error.client_request_id == "cid-1"
    assert f"HTTP {code}" in error.message


def test_connection_errors_are_retried_and_end_unavailable() -> None:
    retries, error = run_until_decided(POLICY.start(0.0), CONNECTION)

    assert retries == POLICY.max_attempts - 1
    assert isinstance(error, EndpointUnavailable) and error.status is None
    assert "refused" in error.message


def test_exhausted_read_timeouts_end_as_timeout() -> None:
    retries, error = run_until_decided(POLICY.start(0.0), READ_TIMEOUT)

    assert retries == POLICY.max_attempts - 1
    assert isinstance(error, EndpointTimeout) and error.code == "endpoint_timeout"


def test_the_last_failure_names_the_error_when_kinds_mix() -> None:
    state = POLICY.start(0.0)
    for _ in range(POLICY.max_attempts - 1):
        assert fail(state, READ_TIMEOUT).retry

    assert isinstance(fail(state, status(503)).error, EndpointUnavailable)


def test_408_is_surfaced_at_once_as_timeout() -> None:
    decision = fail(POLICY.start(0.0), status(408, body="request timed out"))

    assert isinstance(decision.error, EndpointTimeout)
    assert "request_timeout_ms" in decision.error.message and decision.error.status == 408


def test_404_is_not_found_at_once() -> None:
    decision = fail(POLICY.start(0.0), status(404))

    assert isinstance(decision.error, EndpointNotFound) and decision.error.code == "endpoint_not_found"
    assert "MEDPARSE_ENDPOINT_DEPLOYMENT" in decision.error.message


@pytest.mark.parametrize("code", [400, 405, 409, 413, 415, 422])
def test_other_4xx_are_rejected_input_without_retry(code: int) -> None:
    decision = fail(POLICY.start(0.0), status(code, body="bad things"))

    assert isinstance(decision.error, EndpointRejectedInput)
    assert "bad things" in decision.error.message


def test_424_with_inner_4xx_is_rejected_input_carrying_the_model_reason() -> None:
    headers = {MODEL_STATUS: "400", MODEL_REASON: "image is not a PNG"}

    decision = fail(POLICY.start(0.0), status(424, headers))

    assert isinstance(decision.error, EndpointRejectedInput)
    assert "image is not a PNG" in decision.error.message and "model status 400" in decision.error.message


def test_424_with_inner_5xx_is_retried_only_up_to_the_424_budget() -> None:
    failure = status(424, {MODEL_STATUS: "500", MODEL_REASON: "OOM"})
    policy = RetryPolicy(max_attempts=10, max_424_attempts=3)

    retries, error = run_until_decided(policy.start(0.0), failure)

    assert retries == 2
    assert isinstance(error, EndpointUnavailable) and "OOM" in error.message


def test_424_without_an_inner_status_counts_as_a_model_failure() -> None:
    assert status(424).kind is FailureKind.model_failed
    assert status(424, {MODEL_STATUS: "junk"}).kind is FailureKind.model_failed


def test_424_budget_is_shared_with_other_failures_by_attempt_count() -> None:
    state = RetryPolicy(max_attempts=3, max_424_attempts=5).start(0.0)
    model_500 = status(424, {MODEL_STATUS: "503"})

    assert fail(state, status(503)).retry
    assert fail(state, model_500).retry
    assert isinstance(fail(state, model_500).error, EndpointUnavailable)


@pytest.mark.parametrize("code", [401, 403])
def test_auth_failure_refreshes_once_and_retries_immediately_then_fails(code: int) -> None:
    state = POLICY.start(0.0)

    first = fail(state, status(code))
    second = fail(state, status(code))

    assert first == Decision(delay_s=0.0, refresh_auth=True)
    assert isinstance(second.error, EndpointAuthFailed) and second.error.code == "endpoint_auth_failed"
    assert second.error.attempts == 2


def test_auth_refresh_is_not_repeated_after_a_later_transient_failure() -> None:
    state = POLICY.start(0.0)

    assert fail(state, status(401)).refresh_auth
    assert fail(state, status(503)).retry
    assert isinstance(fail(state, status(401)).error, EndpointAuthFailed)


@pytest.mark.parametrize("code", [301, 302, 501, 505])
def test_undefined_statuses_are_bad_responses(code: int) -> None:
    assert isinstance(fail(POLICY.start(0.0), status(code)).error, EndpointBadResponse)


def test_backoff_is_full_jitter_between_floor_and_an_exponential_cap() -> None:
    rng = random.Random(7)
    for retry_index, cap in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (6, 30.0), (200, 30.0)]:
        delays = [POLICY.backoff_s(retry_index, rng) for _ in range(400)]
        assert min(delays) >= 0.5 and max(delays) <= cap
        if cap > 1.0:
            assert max(delays) > 0.8 * cap, "the whole range is used"
            assert min(delays) < 0.5 + 0.2 * (cap - 0.5)


def test_each_retry_waits_within_its_own_exponential_cap() -> None:
    state = POLICY.start(0.0, rng=random.Random(3))

    delays = [fail(state, CONNECTION).delay_s for _ in range(5)]

    for k, delay in enumerate(delays):
        assert 0.5 <= delay <= min(30.0, 0.5 * 2**k)


def test_retry_after_seconds_are_honoured_and_capped() -> None:
    state = POLICY.start(0.0)

    short = fail(state, status(429, {"retry-after": "2"}))
    long = fail(state, status(429, {"retry-after": "3600"}))

    assert short.delay_s == 2.0
    assert long.delay_s == POLICY.backoff_max_s


def test_retry_after_parsing() -> None:
    in_ten = format_datetime(datetime.now(UTC) + timedelta(seconds=10), usegmt=True)

    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert 8.0 < (parse_retry_after(in_ten) or 0.0) <= 10.0


def test_the_total_time_budget_stops_retries_before_sleeping_past_it() -> None:
    policy = RetryPolicy(max_attempts=100, max_total_s=10.0, backoff_min_s=1.0, backoff_max_s=1.0)
    state = policy.start(100.0)

    assert fail(state, status(503), now=108.5).retry
    decision = fail(state, status(503), now=109.2)

    assert isinstance(decision.error, EndpointUnavailable)
    assert "endpoint_max_total_s=10" in decision.error.message
    assert state.remaining_s(109.2) == pytest.approx(0.8)


def test_a_retry_after_beyond_the_budget_gives_up_now() -> None:
    state = RetryPolicy(max_total_s=5.0, backoff_max_s=60.0).start(0.0)

    decision = fail(state, status(503, {"retry-after": "30"}), now=1.0)

    assert isinstance(decision.error, EndpointUnavailable)


def test_give_up_builds_an_unavailable_error_for_outside_reasons() -> None:
    state = POLICY.start(0.0, client_request_id="cid")

    error = state.give_up(Failure(FailureKind.overloaded, detail="slots busy"), "waiting for a slot")

    assert isinstance(error, EndpointUnavailable) and "slots busy" in error.message
    assert error.client_request_id == "cid"
