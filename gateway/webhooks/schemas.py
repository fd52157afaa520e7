"""Pydantic schemas of the webhook API: endpoints, secrets, deliveries and their attempts."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from db.delivery_status import DeliveryStatus
from gateway.jobs.schemas import MultilineText, UrlText
from medparse.webhooks.ssrf import MAX_URL_CHARS

Url = Annotated[UrlText, Field(min_length=1, max_length=MAX_URL_CHARS)]
#: free text, stored in Postgres (which refuses NUL) and shown in dashboards
Description = Annotated[MultilineText, Field(max_length=200)]
#: There are a handful of event types; a longer list is a mistake or an attack on the parser.
EventTypes = Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=32)]


class WebhookCreate(BaseModel):
    """``POST /v1/webhooks``."""

    model_config = ConfigDict(extra="forbid")
    url: Url
    #: null or omitted: every event type
    event_types: EventTypes | None = None
    description: Description | None = None


class WebhookUpdate(BaseModel):
    """``PATCH /v1/webhooks/{id}``: only the fields given change (``event_types: null`` = all)."""

    model_config = ConfigDict(extra="forbid")
    url: Url | None = None
    event_types: EventTypes | None = None
    description: Description | None = None
    #: true re-enables an endpoint that was disabled (e.g. after it answered 410)
    enabled: bool | None = None


class WebhookUrls(BaseModel):
    get: str
    deliveries: str
    secret: str
    rotate_secret: str


class WebhookPublic(BaseModel):
    id: uuid.UUID
    url: str
    description: str | None
    event_types: list[str] | None
    enabled: bool
    #: ``gone`` (the receiver answered 410) or ``disabled_by_tenant``
    disabled_reason: str | None
    disabled_at: datetime | None
    created_at: datetime
    updated_at: datetime
    urls: WebhookUrls


class WebhookCreatedPublic(WebhookPublic):
    #: the signing secret (also at ``GET /v1/webhooks/{id}/secret``)
    secret: str


class WebhooksPublic(BaseModel):
    data: list[WebhookPublic]


class SecretPublic(BaseModel):
    """A signing secret, ``whsec_`` + base64 (Standard Webhooks)."""

    key: str
    #: after a rotation, the old secret also signs (a second signature) until then
    previous_key_expires_at: datetime | None = None


class AttemptPublic(BaseModel):
    attempt: int
    started_at: datetime
    duration_ms: int
    status_code: int | None
    #: succeeded, failed (retried), gone (410), refused (SSRF policy or disabled target)
    outcome: str
    error: str | None


class DeliveryUrls(BaseModel):
    get: str
    redeliver: str
    job: str


class DeliveryPublic(BaseModel):
    id: uuid.UUID
    #: the ``webhook-id`` header, the same on every retry and replay
    webhook_id: str
    job_id: uuid.UUID
    #: the registered endpoint; null for the job's own ``webhook_url``
    endpoint_id: uuid.UUID | None
    target: Literal["job_url", "endpoint"]
    event_type: str
    status: DeliveryStatus
    attempt_count: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    attempts: list[AttemptPublic]
    urls: DeliveryUrls


class DeliveriesPublic(BaseModel):
    data: list[DeliveryPublic]
    next_cursor: str | None
