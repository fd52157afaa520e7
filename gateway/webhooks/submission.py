"""``webhook_url`` and ``webhook_events`` of ``POST /v1/jobs``, and the SSRF check of any webhook
URL the API accepts (a per-job URL or a registered endpoint).

Multipart: ``webhook_url`` once, ``webhook_events`` comma-separated and/or repeated.
JSON: ``"webhook_url": "https://..."``, ``"webhook_events": ["job.succeeded", ...]``.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

from aiohttp import BodyPartReader, web

from gateway.http.problems import ApiProblem, field_error
from gateway.keys import SETTINGS
from medparse.webhooks.events import DEFAULT_JOB_EVENTS, UnknownEventType, parse_event_types
from medparse.webhooks.ssrf import MAX_URL_CHARS, Resolver, UnsafeTarget, check_url

FIELDS = ("webhook_url", "webhook_events")
#: Four event types, possibly each in its own repeated field, plus slack for separators.
MAX_EVENTS_CHARS = 256


@dataclass(frozen=True)
class JobWebhookRequest:
    url: str
    events: list[str]

    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.url}\x1f{','.join(self.events)}".encode()).hexdigest()


class TargetPolicy:
    """Checks a webhook URL against the SSRF policy (DNS in a thread, never on the event loop).

    Tests put one with a fake resolver under ``WEBHOOK_POLICY``.
    """

    def __init__(self, *, allow_private: bool, resolver: Resolver | None = None) -> None:
        self.allow_private = allow_private
        self.resolver = resolver

    async def check(self, field: str, url: str) -> str:
        try:
            await asyncio.to_thread(check_url, url, allow_private=self.allow_private, resolver=self.resolver)
        except UnsafeTarget as exc:
            raise ApiProblem(
                422, "webhook_target_refused" if exc.reason != "invalid_url" else "invalid_field",
                f"{field}: {exc.message}", fields=[{"field": field, "message": exc.message, "reason": exc.reason}],
            ) from None
        return url


WEBHOOK_POLICY = web.AppKey("webhook_policy", TargetPolicy)


def target_policy(app: web.Application) -> TargetPolicy:
    policy = app.get(WEBHOOK_POLICY)
    if policy is None:
        policy = TargetPolicy(allow_private=app[SETTINGS].webhook_allow_private_targets)
    return policy


def parse_events(values: list[str], field: str = "webhook_events") -> list[str]:
    try:
        events = parse_event_types(v for raw in values for v in raw.split(","))
    except UnknownEventType as exc:
        raise field_error(field, str(exc)) from None
    if not events:
        raise field_error(field, "name at least one event type")
    return events


async def check_job_webhook(
    request: web.Request, url: str | None, events: list[str] | str | None
) -> JobWebhookRequest | None:
    """The job's webhook from its submitted fields; 422 naming the field when it is not acceptable."""
    if isinstance(events, str):
        events = [events]
    if url is None or url == "":
        if events:
            raise field_error("webhook_events", "given without webhook_url")
        return None
    chosen = parse_events(events) if events else [e.value for e in DEFAULT_JOB_EVENTS]
    await target_policy(request.app).check("webhook_url", url.strip())
    return JobWebhookRequest(url=url.strip(), events=chosen)


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
