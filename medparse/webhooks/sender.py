"""One HTTP attempt of a webhook delivery, to an address checked against the SSRF policy.

The name is resolved once, every address is checked, and the request goes to the checked IP
literally (``https://203.0.113.7:443/path``) with the original ``Host`` header and, for https,
the original name as TLS SNI and certificate hostname (httpcore's ``sni_hostname`` extension).
No second lookup happens, so a rebinding DNS answer cannot redirect the connection. Keep-alive
is off: a pooled connection is keyed by IP, and must never carry a request for another name.

Requests go straight to an ``httpx.HTTPTransport``, not through an ``httpx.Client``: a transport
never follows redirects (a 3xx is a failed attempt), keeps no cookie jar (one receiver could
otherwise plant cookies sent to another tenant's receiver on the same IP), reads no proxy from the
environment, and does not log the URL (its query may carry the receiver's own token). The
response body is never read.

Each attempt has a wall-clock deadline (``attempt_deadline_s``: connect, TLS, sending the request
and the response headers, medparse/http_deadline.py), so a receiver that trickles its answer one
byte at a time is a failed attempt like any other timeout, never a worker thread held for minutes.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import time
from dataclasses import dataclass
from enum import StrEnum

import httpx

from medparse.http_deadline import deadline_in, deadline_transport
from medparse.webhooks.schedule import parse_retry_after
from medparse.webhooks.ssrf import Resolver, Target, UnsafeTarget, parse_target, resolve_target

log = logging.getLogger(__name__)

USER_AGENT = "medparse-webhooks/1"


class Outcome(StrEnum):
    """The result of one attempt, as the sender saw it (stored per attempt). Not a delivery status:
    the worker picks the delivery's next status from the transitions of ``db.delivery_status``."""

    #: any 2xx
    succeeded = "succeeded"
    #: timeout, connection error, DNS failure or a non-2xx answer: retried on the schedule
    failed = "failed"
    #: 410 Gone: the receiver asked us to stop; the endpoint is disabled
    gone = "gone"
    #: the target is not allowed (SSRF policy): not retried
    refused = "refused"


@dataclass(frozen=True)
class AttemptResult:
    outcome: Outcome
    status_code: int | None
    error: str | None
    retry_after_s: float | None
    duration_ms: int


def _request_url(target: Target, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"{target.scheme}://{host}:{target.port}{target.target}"


def classify_status(status: int) -> tuple[Outcome, str | None]:
    if 200 <= status < 300:
        return Outcome.succeeded, None
    if status == 410:
        return Outcome.gone, "HTTP 410: the receiver is gone"
    if 300 <= status < 400:
        return Outcome.failed, f"HTTP {status}: redirects are not followed"
    return Outcome.failed, f"HTTP {status}"


class WebhookSender:
    """Thread-safe; one per worker process."""

    def __init__(
        self,
        *,
        timeout_s: float,
        allow_private: bool,
        attempt_deadline_s: float | None = None,
        resolver: Resolver | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._allow_private = allow_private
        self._resolver = resolver
        self._timeout = httpx.Timeout(timeout_s).as_dict()
        #: None (tests of other behaviour only): each phase bounded by timeout_s alone
        self._deadline_s = attempt_deadline_s
        self._transport = deadline_transport(
            verify=verify, trust_env=False, limits=httpx.Limits(max_keepalive_connections=0)
        )

    def close(self) -> None:
        self._transport.close()

    def send(self, url: str, body: bytes, headers: dict[str, str]) -> AttemptResult:
        started = time.monotonic()

        def result(outcome: Outcome, status: int | None, error: str | None, retry_after: float | None = None) -> (
            AttemptResult
        ):
            elapsed = int((time.monotonic() - started) * 1000)
            return AttemptResult(outcome, status, error and error[:200], retry_after, elapsed)

        try:
            target = parse_target(url)
            addresses = resolve_target(target, allow_private=self._allow_private, resolver=self._resolver)
        except UnsafeTarget as exc:
            # A name that does not resolve now may resolve later; a forbidden address is policy.
            outcome = Outcome.failed if exc.reason == "unresolvable" else Outcome.refused
            return result(outcome, None, f"{exc.reason}: {exc.message}")
        extensions: dict[str, object] = {"timeout": self._timeout}
        if target.scheme == "https" and target.literal_ip is None:
            extensions["sni_hostname"] = target.host
        request = httpx.Request(
            "POST",
            _request_url(target, addresses[0]),
            content=body,
            headers={**headers, "host": target.host_header, "user-agent": USER_AGENT},
            extensions=extensions,
        )
        try:
            if self._deadline_s is None:
                response = self._transport.handle_request(request)
            else:
                with deadline_in(self._deadline_s):
                    response = self._transport.handle_request(request)
            response.close()  # unread: closing a connection without keep-alive reads nothing more
        except httpx.TimeoutException as exc:
            if self._deadline_s is not None and time.monotonic() - started >= self._deadline_s - 0.05:
                return result(Outcome.failed, None, f"timeout: no answer within the attempt deadline of "
                              f"{self._deadline_s:g} s ({type(exc).__name__})")
            return result(Outcome.failed, None, f"timeout: {type(exc).__name__}")
        except httpx.HTTPError as exc:
            return result(Outcome.failed, None, f"connection error: {type(exc).__name__}")
        outcome, error = classify_status(response.status_code)
        retry_after = parse_retry_after(response.headers.get("retry-after")) if outcome is Outcome.failed else None
        return result(outcome, response.status_code, error, retry_after)
