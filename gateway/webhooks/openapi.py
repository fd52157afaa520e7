"""The webhook API's part of the OpenAPI document (merged in by ``gateway.openapi``)."""

from __future__ import annotations

from typing import Any

from gateway.webhooks.schemas import (
    DeliveriesPublic,
    DeliveryPublic,
    SecretPublic,
    WebhookCreate,
    WebhookCreatedPublic,
    WebhookPublic,
    WebhooksPublic,
    WebhookUpdate,
)
from medparse.webhooks.events import ALL_EVENTS

REF = "#/components/schemas/{model}"
INPUT_MODELS = (WebhookCreate, WebhookUpdate)
OUTPUT_MODELS = (WebhookPublic, WebhookCreatedPublic, WebhooksPublic, SecretPublic, DeliveryPublic, DeliveriesPublic)
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


def _json(name: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": REF.format(model=name)}}}}


def _errors(*codes: int) -> dict[str, Any]:
    problem = {"application/problem+json": {"schema": {"$ref": REF.format(model="ProblemPublic")}}}
    return {str(c): {"description": "problem", "content": problem} for c in (*codes, 401, 403)}


def _uuid_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}


WEBHOOK_ID, JOB_ID, DELIVERY_ID = _uuid_param("webhook_id"), _uuid_param("job_id"), _uuid_param("delivery_id")
PAGE = [
    {"name": "status", "in": "query",
     "schema": {"type": "string", "enum": ["pending", "sending", "succeeded", "failed"]}},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
]


def _op(op_id: str, status: int, what: str, model: str | None, errors: tuple[int, ...], **extra: Any) -> dict[str, Any]:
    response: dict[str, Any] = {"description": what, **(_json(model) if model else {})}
    return {"operationId": op_id, **extra, "responses": {str(status): response, **_errors(*errors)}}


def webhook_paths() -> dict[str, Any]:
    secret_get = _op("getDefaultWebhookSecret", 200, "the tenant's default secret (signs per-job webhook_url calls)",
                     "SecretPublic", ())
    return {
        "/v1/webhooks": {
            "post": _op("createWebhook", 201, "created; the response carries its secret", "WebhookCreatedPublic",
                        (409, 422), requestBody={"required": True, **_json("WebhookCreate")}),
            "get": _op("listWebhooks", 200, "the tenant's webhook endpoints", "WebhooksPublic", ()),
        },
        "/v1/webhooks/default/secret": {"get": secret_get},
        "/v1/webhooks/default/rotate-secret": {"post": _op(
            "rotateDefaultWebhookSecret", 200, "the new secret; the old one keeps signing during the overlap",
            "SecretPublic", ())},
        "/v1/webhooks/{webhook_id}": {
            "get": _op("getWebhook", 200, "the endpoint", "WebhookPublic", (404,), parameters=[WEBHOOK_ID]),
            "patch": _op("updateWebhook", 200, "updated", "WebhookPublic", (404, 422), parameters=[WEBHOOK_ID],
                         requestBody={"required": True, **_json("WebhookUpdate")}),
            "delete": _op("deleteWebhook", 204, "deleted with its deliveries", None, (404,), parameters=[WEBHOOK_ID]),
        },
        "/v1/webhooks/{webhook_id}/secret": {"get": _op(
            "getWebhookSecret", 200, "the endpoint's signing secret", "SecretPublic", (404,), parameters=[WEBHOOK_ID])},
        "/v1/webhooks/{webhook_id}/rotate-secret": {"post": _op(
            "rotateWebhookSecret", 200, "the new secret; the old one keeps signing during the overlap",
            "SecretPublic", (404,), parameters=[WEBHOOK_ID])},
        "/v1/webhooks/{webhook_id}/deliveries": {"get": _op(
            "listWebhookDeliveries", 200, "the endpoint's deliveries with their attempts, newest first",
            "DeliveriesPublic", (400, 404), parameters=[WEBHOOK_ID, *PAGE])},
        "/v1/jobs/{job_id}/deliveries": {"get": _op(
            "listJobDeliveries", 200, "the job's deliveries (its webhook_url and the endpoints) with attempts",
            "DeliveriesPublic", (400, 404), parameters=[JOB_ID, *PAGE])},
        "/v1/deliveries": {"get": _op(
            "listDeliveries", 200, "all the tenant's deliveries, newest first (status=failed: what to replay)",
            "DeliveriesPublic", (400,), parameters=PAGE)},
        "/v1/deliveries/{delivery_id}": {"get": _op(
            "getDelivery", 200, "one delivery with its attempts", "DeliveryPublic", (404,), parameters=[DELIVERY_ID])},
        "/v1/deliveries/{delivery_id}/redeliver": {"post": _op(
            "redeliverDelivery", 202, "queued to be sent again now: same webhook-id, fresh retry schedule",
            "DeliveryPublic", (404, 409), parameters=[DELIVERY_ID])},
    }
