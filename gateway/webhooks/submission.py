"""``webhook_url`` and ``webhook_events`` of ``POST /v1/jobs`` as the request carries them, and the
SSRF policy in force for this app (``WEBHOOK_POLICY``). The rules themselves are in
gateway/webhooks/rules.py.

Multipart: ``webhook_url`` once, ``webhook_events`` comma-separated and/or repeated.
JSON: ``"webhook_url": "https://..."``, ``"webhook_events": ["job.succeeded", ...]``.
"""

from __future__ import annotations

from aiohttp import BodyPartReader, web

from gateway.http.problems import field_error
from gateway.keys import SETTINGS
from gateway.webhooks.rules import JobWebhookRequest, TargetPolicy, job_webhook
from medparse.webhooks.ssrf import MAX_URL_CHARS

__all__ = ["WEBHOOK_POLICY", "JobWebhookRequest", "TargetPolicy", "WebhookFormFields", "check_job_webhook",
           "target_policy"]

FIELDS = ("webhook_url", "webhook_events")
#: Four event types, possibly each in its own repeated field, plus slack for separators.
MAX_EVENTS_CHARS = 256

WEBHOOK_POLICY = web.AppKey("webhook_policy", TargetPolicy)


def target_policy(app: web.Application) -> TargetPolicy:
    """The policy tests put under ``WEBHOOK_POLICY`` (a fake resolver), else the settings' one."""
    policy = app.get(WEBHOOK_POLICY)
    if policy is None:
        policy = TargetPolicy(allow_private=app[SETTINGS].webhook_allow_private_targets)
    return policy


async def check_job_webhook(
    request: web.Request, url: str | None, events: list[str] | str | None
) -> JobWebhookRequest | None:
    """The job's webhook from its submitted fields; 422 naming the field when it is not acceptable."""
    if isinstance(events, str):
        events = [events]
    return await job_webhook(target_policy(request.app), url, events)


class WebhookFormFields:
    """Collects ``webhook_url`` / ``webhook_events`` parts of a multipart job submission."""

    def __init__(self) -> None:
        self.url: str | None = None
        self.events: list[str] = []
        self._events_chars = 0

    @staticmethod
    def accepts(name: str | None) -> bool:
        return name in FIELDS

    async def read(self, part: BodyPartReader, name: str) -> None:
        """The value of form field ``name`` (as gateway.jobs.submission.field_name parsed it)."""
        chunks: list[bytes] = []
        size = 0
        limit = MAX_URL_CHARS if name == "webhook_url" else MAX_EVENTS_CHARS
        while chunk := await part.read_chunk(4096):
            size += len(chunk)
            if size > limit:
                raise field_error(name, f"at most {limit} characters")
            chunks.append(chunk)
        try:
            value = b"".join(chunks).decode("utf-8", errors="strict")
        except UnicodeDecodeError:
            raise field_error(name, "must be UTF-8 text", status=400) from None
        if name == "webhook_url":
            if self.url is not None:
                raise field_error("webhook_url", "given more than once", status=400)
            self.url = value
        else:
            self._events_chars += len(value)
            if self._events_chars > MAX_EVENTS_CHARS:
                raise field_error("webhook_events", f"at most {MAX_EVENTS_CHARS} characters in all")
            self.events.append(value)

    async def result(self, request: web.Request) -> JobWebhookRequest | None:
        return await check_job_webhook(request, self.url, self.events or None)
