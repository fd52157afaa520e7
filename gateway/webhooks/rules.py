"""What the webhook API accepts, without HTTP: target URLs under the SSRF policy, event type names,
and the job's own webhook (``webhook_url`` / ``webhook_events`` of a submission) as a domain value.

Refusals are domain errors (gateway/errors.py) naming the field; the handlers' parsing of form
fields and query values stays in gateway/webhooks/submission.py and handlers.py.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.errors import InvalidField, WebhookTargetRefused
from medparse.webhooks.events import DEFAULT_JOB_EVENTS, UnknownEventType, parse_event_types
from medparse.webhooks.ssrf import Resolver, UnsafeTarget, check_url


@dataclass(frozen=True)
class JobWebhookRequest:
    url: str
    events: list[str]

    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.url}\x1f{','.join(self.events)}".encode()).hexdigest()


class TargetPolicy:
    """Checks a webhook URL against the SSRF policy (DNS in a thread, never on the event loop).

    Tests put one with a fake resolver under ``gateway.webhooks.submission.WEBHOOK_POLICY``.
    """

    def __init__(self, *, allow_private: bool, resolver: Resolver | None = None) -> None:
        self.allow_private = allow_private
        self.resolver = resolver

    async def check(self, field: str, url: str) -> str:
        """``url`` when the policy allows it as a target.

        Raises:
            WebhookTargetRefused: naming ``field``, when it is not a URL or points where we may not send.
        """
        try:
            await asyncio.to_thread(check_url, url, allow_private=self.allow_private, resolver=self.resolver)
        except UnsafeTarget as exc:
            raise WebhookTargetRefused(field, exc.message, exc.reason) from None
        return url


def parse_events(values: Iterable[str], field: str = "webhook_events") -> list[str]:
    """Event type names, each value comma-separated, in their canonical order.

    Raises:
        InvalidField: naming ``field``, for an unknown name or when no name is given.
    """
    try:
        events = parse_event_types(v for raw in values for v in raw.split(","))
    except UnknownEventType as exc:
        raise InvalidField(field, str(exc)) from None
    if not events:
        raise InvalidField(field, "name at least one event type")
    return events


async def job_webhook(
    policy: TargetPolicy, url: str | None, events: list[str] | None
) -> JobWebhookRequest | None:
    """The job's webhook from its submitted fields (None without ``webhook_url``).

    Raises:
        InvalidField: events without a URL, unknown events.
        WebhookTargetRefused: a URL the SSRF policy refuses.
    """
    if url is None or url == "":
        if events:
            raise InvalidField("webhook_events", "given without webhook_url")
        return None
    chosen = parse_events(events) if events else [e.value for e in DEFAULT_JOB_EVENTS]
    await policy.check("webhook_url", url.strip())
    return JobWebhookRequest(url=url.strip(), events=chosen)
