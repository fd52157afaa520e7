"""Thin handlers of the webhook API (their routes are in the route table, gateway/routes.py).

Webhooks belong to the job API: reading needs ``jobs:read``; changing endpoints, reading or
rotating secrets and replaying deliveries need ``jobs:write``. A tenant's ``admin`` key also lists, deletes
and reads or rotates the secrets of its endpoints, but cannot create one or change its URL (that would
direct job events, which carry results, to it) nor read deliveries (they are about jobs).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from aiohttp import web

from db.delivery_status import DeliveryStatus
from gateway.http.auth import ADMIN, principal
from gateway.http.cursors import decode_cursor, encode_cursor
from gateway.http.idempotency import KeyHandling, handles_key
from gateway.http.params import job_id_from, json_response, page_limit, parse_body, path_uuid
from gateway.http.problems import field_error
from gateway.keys import DEPS
from gateway.webhooks import services
from gateway.webhooks.schemas import DeliveriesPublic, WebhookCreate, WebhooksPublic, WebhookUpdate
from gateway.webhooks.submission import target_policy

READ, WRITE = "jobs:read", "jobs:write"


def _webhook_id(request: web.Request) -> uuid.UUID:
    return path_uuid(request, "webhook_id", "webhook")


def _status(request: web.Request) -> DeliveryStatus | None:
    raw = request.query.get("status") or None
    if raw is None:
        return None
    try:
        return DeliveryStatus(raw)
    except ValueError:
        raise field_error("status", f"one of {', '.join(DeliveryStatus)}", status=400) from None


def _page(request: web.Request) -> tuple[DeliveryStatus | None, int, tuple[datetime, uuid.UUID] | None]:
    """``?status=``, ``?limit=`` and ``?cursor=`` of a delivery listing, checked in that order."""
    status, limit, cursor = _status(request), page_limit(request), request.query.get("cursor")
    return status, limit, decode_cursor(cursor) if cursor else None


async def create_webhook(request: web.Request) -> web.Response:
    # Not ``admin``: an endpoint receives every job's labels, boxes and errors, which an admin-only key may not read.
    who = principal(request, WRITE)
    body = await parse_body(request, WebhookCreate)
    created = await services.create_endpoint(request.app[DEPS], target_policy(request.app), who.tenant_id, body)
    return json_response(created, status=201, headers={"Location": created.urls.get})


async def list_webhooks(request: web.Request) -> web.Response:
    who = principal(request, READ, ADMIN)
    return json_response(WebhooksPublic(data=await services.list_endpoints(request.app[DEPS], who.tenant_id)))


async def get_webhook(request: web.Request) -> web.Response:
    who = principal(request, READ, ADMIN)
    endpoint_id = _webhook_id(request)
    return json_response(await services.get_endpoint(request.app[DEPS], who.tenant_id, endpoint_id))


async def update_webhook(request: web.Request) -> web.Response:
    who = principal(request, WRITE)  # it may point the endpoint elsewhere: as create_webhook
    endpoint_id = _webhook_id(request)
    body = await parse_body(request, WebhookUpdate)
    updated = await services.update_endpoint(
        request.app[DEPS], target_policy(request.app), who.tenant_id, endpoint_id, body
    )
    return json_response(updated)


async def delete_webhook(request: web.Request) -> web.Response:
    who = principal(request, WRITE, ADMIN)
    await services.delete_endpoint(request.app[DEPS], who.tenant_id, _webhook_id(request))
    return web.Response(status=204)


async def get_webhook_secret(request: web.Request) -> web.Response:
    who = principal(request, WRITE, ADMIN)
    endpoint_id = _webhook_id(request)
    return json_response(await services.endpoint_secret(request.app[DEPS], who.tenant_id, endpoint_id))


@handles_key(KeyHandling.REFUSED)  # the answer holds the new secret
async def rotate_webhook_secret(request: web.Request) -> web.Response:
    who = principal(request, WRITE, ADMIN)
    endpoint_id = _webhook_id(request)
    return json_response(await services.rotate_endpoint_secret(request.app[DEPS], who.tenant_id, endpoint_id))


async def get_default_secret(request: web.Request) -> web.Response:
    who = principal(request, WRITE, ADMIN)
    return json_response(await services.default_secret(request.app[DEPS], who.tenant_id))


@handles_key(KeyHandling.REFUSED)  # the answer holds the new secret
async def rotate_default_secret(request: web.Request) -> web.Response:
    who = principal(request, WRITE, ADMIN)
    return json_response(await services.rotate_default_secret(request.app[DEPS], who.tenant_id))


async def _deliveries(
    request: web.Request, *, job_id: uuid.UUID | None = None, endpoint_id: uuid.UUID | None = None
) -> web.Response:
    who = principal(request, READ)
    status, limit, after = _page(request)
    query = services.DeliveryQuery(job_id=job_id, endpoint_id=endpoint_id, status=status, limit=limit, after=after)
    page = await services.list_deliveries(request.app[DEPS], who.tenant_id, query)
    next_cursor = encode_cursor(*page.next_after) if page.next_after is not None else None
    return json_response(DeliveriesPublic(data=page.deliveries, next_cursor=next_cursor))


async def list_job_deliveries(request: web.Request) -> web.Response:
    return await _deliveries(request, job_id=job_id_from(request))


async def list_webhook_deliveries(request: web.Request) -> web.Response:
    return await _deliveries(request, endpoint_id=_webhook_id(request))


async def list_all_deliveries(request: web.Request) -> web.Response:
    return await _deliveries(request)


async def get_delivery(request: web.Request) -> web.Response:
    who = principal(request, READ)
    delivery_id = path_uuid(request, "delivery_id", "delivery")
    return json_response(await services.get_delivery(request.app[DEPS], who.tenant_id, delivery_id))


async def redeliver(request: web.Request) -> web.Response:
    who = principal(request, WRITE)
    delivery_id = path_uuid(request, "delivery_id", "delivery")
    delivery = await services.redeliver(request.app[DEPS], who.tenant_id, delivery_id)
    return json_response(delivery, status=202)

