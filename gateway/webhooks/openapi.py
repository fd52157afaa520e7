"""What the webhook API adds to the OpenAPI vocabulary: the job form's webhook fields, the delivery filters.

The routes themselves, with their metadata, are in the one route table (gateway/routes.py).
"""

from __future__ import annotations

from typing import Any

from db.delivery_status import DeliveryStatus
from gateway.openapi import CURSOR, LIMIT, Param
from medparse.webhooks.events import ALL_EVENTS

EVENT_NAMES = [e.value for e in ALL_EVENTS]

#: Extra ``POST /v1/jobs`` multipart fields.
FORM_FIELDS: dict[str, Any] = {
    "webhook_url": {"type": "string", "format": "uri", "description": "called on the job's events (http/https)"},
    "webhook_events": {
        "type": "string", "example": "job.succeeded,job.failed",
        "description": f"comma-separated and/or repeated; any of {', '.join(EVENT_NAMES)} "
        "(default: the terminal ones)",
    },
}

#: A page of deliveries: by status, newest first.
DELIVERY_PAGE: tuple[Param, ...] = (
    Param("status", "query", {"type": "string", "enum": [s.value for s in DeliveryStatus]}),
    LIMIT,
    CURSOR,
)
