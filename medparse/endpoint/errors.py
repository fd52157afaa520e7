"""Errors of one endpoint call, each with a stable ``code`` and an actionable ``message``.

Callers (the worker pipeline) store ``code`` on the failed job and show ``message`` to the user.
``transient`` says whether running the same job again later can succeed without a change.
"""

from __future__ import annotations

from typing import ClassVar


class EndpointError(Exception):
    code: ClassVar[str] = "endpoint_error"
    transient: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        attempts: int = 0,
        client_request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        #: HTTP status of the last answer, None when there was none (connection error, timeout)
        self.status = status
        #: HTTP attempts made before giving up
        self.attempts = attempts
        #: the ``x-ms-client-request-id`` sent, for the endpoint's traffic log
        self.client_request_id = client_request_id

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class EndpointTimeout(EndpointError):
    """408 (the model ran past request_timeout_ms), or every attempt hit our read timeout."""

    code = "endpoint_timeout"
    transient = True


class EndpointRejectedInput(EndpointError):
    """400-class answer, or 424 whose inner model status is 4xx: the request must change."""

    code = "endpoint_rejected_input"


class EndpointUnavailable(EndpointError):
    """429/5xx/connection errors until attempts or total time ran out."""

    code = "endpoint_unavailable"
    transient = True


class EndpointAuthFailed(EndpointError):
    """401/403 even after one credential refresh, or no credential could be obtained."""

    code = "endpoint_auth_failed"


class EndpointNotFound(EndpointError):
    """404: wrong scoring URI, or no deployment with traffic (or the pinned one does not exist)."""

    code = "endpoint_not_found"


class EndpointBadResponse(EndpointError):
    """An answer we cannot trust: not the documented shape, wrong mask count, size or bytes."""

    code = "endpoint_bad_response"


class JobTimeLimitExceeded(EndpointError):
    """The job's own time limit (``task_soft_time_limit_s``) ran out during or between endpoint
    requests: whatever the worker pool type, a hung or trickling endpoint cannot keep a job running."""

    code = "timeout"
