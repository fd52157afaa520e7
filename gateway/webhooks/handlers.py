"""Thin handlers of the webhook API, and its routes (``setup_webhook_routes``).

Webhooks belong to the job API: reading needs ``jobs:read``; changing endpoints, reading or
rotating secrets and replaying deliveries need ``jobs:write``. A tenant's ``admin`` key also lists, deletes
and reads or rotates the secrets of its endpoints, but cannot create one or change its URL (that would
direct job events, which carry results, to it) nor read deliveries (they are about jobs).
"""

from __future__ import annotations

import uuid

from aiohttp import web

from db.webhooks import DELIVERY_STATUSES
from gateway.http.auth import ADMIN, principal
from gateway.http.params import job_id_from, json_response, page_limit, parse_body, path_uuid
from gateway.http.problems import field_error
from gateway.keys import ENGINE, SETTINGS
from gateway.webhooks import services
from gateway.webhooks.schemas import DeliveriesPublic, WebhookCreate, WebhooksPublic, WebhookUpdate
from gateway.webhooks.submission import target_policy

READ, WRITE = "jobs:read", "jobs:write"
def _webhook_id(request: web.Request) -> uuid.UUID:
    return path_uuid(request, "webhook_id", "webhook")


def _page(request: web.Request) -> tuple[str | None, int, str | None]:
    status = request.query.get("status") or None
    if status is not None and status not in DELIVERY_STATUSES:
        raise field_error("status", f"one of {', '.join(DELIVERY_STATUSES)}", status=400)
    return status, page_limit(request), request.query.get("cursor")


async def create_webhook(request: web.Request) -> web.Response:
    # Not ``admin``: an endpoint receives every job's labels, boxes and errors, which an admin-only key may not read.
    who = principal(request, WRITE)
    body = await parse_body(request, WebhookCreate)
    created = await services.create_endpoint(
        request.app[ENGINE], request.app[SETTINGS], target_policy(request.app), who.tenant_id, body
    )
    return json_response(created, status=201, headers={"Location": created.urls.get})


async def list_webhooks(request: web.Request) -> web.Response:
    who = principal(request, READ, ADMIN)
    return json_response(WebhooksPublic(data=await services.list_endpoints(request.app[ENGINE], who.tenant_id)))


async def get_webhook(request: web.Request) -> web.Response:
    who = principal(request, READ, ADMIN)
    endpoint_id = _webhook_id(request)
    return json_response(await services.get_endpoint(request.app[ENGINE], who.tenant_id, endpoint_id))


async def update_webhook(request: web.Request) -> web.Response:
    who = principal(request, WRITE)  # it may point the endpoint elsewhere: as create_webhook
    endpoint_id = _webhook_id(request)
    body = await parse_body(request, WebhookUpdate)
    updated = await services.update_endpoint(
        request.app[ENGINE], target_policy(request.app), who.tenant_id, endpoint_id, body
    )
    return json_response(updated)


async def delete_webhook(request: web.Request) -> web.Response:
    who = principal(request, WRITE, ADMIN)
    await services.delete_endpoint(request.app[ENGINE], who.tenant_id, _webhook_id(request))
    return web.Response(status=204)


async def get_webhook_secret(request: web.Request) -> web.Response:
    who = principal(request, WRITE, ADMIN)
    endpoint_id = _webhook_id(request)
    return json_response(await services.endpoint_secret(request.app[ENGINE], who.tenant_id, endpoint_id))


async def rotate_webhook_secret(request: web.Request) -> web.Response:
    who = principal(request, WRITE, ADMIN)
    endpoint_id = _webhook_id(request)
    secret = await services.rotate_endpoint_secret(
        request.app[ENGINE], request.app[SETTINGS], who.tenant_id, endpoint_id
    )
    return json_response(secret)


async def get_default_secret(request: web.Request) -> web.Response:
    who = principal(request, WRITE, ADMIN)
    return json_response(await services.default_secret(request.app[ENGINE], who.tenant_id))


async def rotate_default_secret(request: web.Request) -> web.Response:
    who = principal(request, WRITE, ADMIN)
    secret = await services.rotate_default_secret(request.app[ENGINE], request.app[SETTINGS], who.tenant_id)
    return json_response(secret)


async def _deliveries(
    request: web.Request, *, job_id: uuid.UUID | None = None, endpoint_id: uuid.UUID | None = None
) -> web.Response:
    who = principal(request, READ)
    status, limit, cursor = _page(request)
    data, next_cursor = await services.list_deliveries(
        request.app[ENGINE], who.tenant_id, job_id=job_id, endpoint_id=endpoint_id,
        status=status, limit=limit, cursor=cursor,
    )
    return json_response(DeliveriesPublic(data=data, next_cursor=next_cursor))


async def list_job_deliveries(request: web.Request) -> web.Response:
    return await _deliveries(request, job_id=job_id_from(request))


async def list_webhook_deliveries(request: web.Request) -> web.Response:
    return await _deliveries(request, endpoint_id=_webhook_id(request))


async def list_all_deliveries(request: web.Request) -> web.Response:
    return await _deliveries(request)


async def get_delivery(request: web.Request) -> web.Response:
    who = principal(request, READ)
    delivery_id = path_uuid(request, "delivery_id", "delivery")
    return json_response(await services.get_delivery(request.app[ENGINE], who.tenant_id, delivery_id))


async def redeliver(request: web.Request) -> web.Response:
    who = principal(request, WRITE)
    delivery_id = path_uuid(request, "delivery_id", "delivery")
    delivery = await services.redeliver(request.app[ENGINE], who.tenant_id, delivery_id)
    return json_response(delivery, status=202)


def setup_webhook_routes(app: web.Application) -> None:
    r = app.router
    # The literal "default" routes come before "{webhook_id}" so they are matched first.
    r.add_get("/v1/webhooks/default/secret", get_default_secret, name="get_default_webhook_secret")
    r.add_post("/v1/webhooks/default/rotate-secret", rotate_default_secret, name="rotate_default_webhook_secret")
    r.add_post("/v1/webhooks", create_webhook, name="create_webhook")
    r.add_get("/v1/webhooks", list_webhooks, name="list_webhooks")
    r.add_get("/v1/webhooks/{webhook_id}", get_webhook, name="get_webhook")
    r.add_patch("/v1/webhooks/{webhook_id}", update_webhook, name="update_webhook")
    r.add_delete("/v1/webhooks/{webhook_id}", delete_webhook, name="delete_webhook")
    r.add_get("/v1/webhooks/{webhook_id}/secret", get_webhook_secret, name="get_webhook_secret")
    r.add_post("/v1/webhooks/{webhook_id}/rotate-secret", rotate_webhook_secret, name="rotate_webhook_secret")
    r.add_get("/v1/webhooks/{webhook_id}/deliveries", list_webhook_deliveries, name="list_webhook_deliveries")
    r.add_get("/v1/jobs/{job_id}/deliveries", list_job_deliveries, name="list_job_deliveries")
    r.add_get("/v1/deliveries", list_all_deliveries, name="list_deliveries")
    r.add_get("/v1/deliveries/{delivery_id}", get_delivery, name="get_delivery")
    r.add_post("/v1/deliveries/{delivery_id}/redeliver", redeliver, name="redeliver_delivery")
