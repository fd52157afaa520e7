"""The route table: every endpoint of the API, as data, with what the OpenAPI document says of it.

``setup_routes`` registers the table and gateway/openapi.py documents it, so the router and the
document cannot drift apart (tests/unit/test_route_table.py checks both directions). Route names are
part of the contract: the audit log (gateway/http/audit.py) and idempotency key on them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway import openapi
from gateway.admin import handlers as admin
from gateway.admin.schemas import (
    KeyCreate,
    KeyCreatedPublic,
    KeyPublic,
    KeysPublic,
    TenantCreate,
    TenantPublic,
    TenantQuotasPatch,
    TenantsPublic,
    UsagePublic,
)
from gateway.jobs import handlers as jobs
from gateway.jobs.schemas import INT32_MAX, HealthPublic, JobCreateJson, JobPublic, JobsPublic
from gateway.openapi import CURSOR, LIMIT, PREFER, Body, Param, Reply
from gateway.results import handlers as results
from gateway.webhooks import handlers as webhooks
from gateway.webhooks.openapi import DELIVERY_PAGE, FORM_FIELDS
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

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: The scopes a tenant's key may hold (gateway/http/auth.py), and the operator credential's role.
READ, WRITE, ADMIN, OPERATOR = "jobs:read", "jobs:write", "admin", "operator"


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    #: the aiohttp route name: the audit log's actions and the idempotency records use it
    name: str
    summary: str
    tag: str
    #: the successful answers; the problems it may answer with come from ``errors`` (and 401/403 under /v1)
    replies: tuple[Reply, ...]
    errors: tuple[int, ...] = ()
    #: who may call it: a key holding any one of these scopes, or ``OPERATOR``; () = no credential (not /v1)
    scopes: tuple[str, ...] = ()
    #: query and header parameters (path parameters come from the path)
    params: tuple[Param, ...] = ()
    body: Body | None = None
    description: str | None = None
    #: False for a route that is not part of the API (none today; the router test names them)
    documented: bool = True

    @property
    def operation_id(self) -> str:
        first, *rest = self.name.split("_")
        return first + "".join(word.title() for word in rest)


def _uuid_query(name: str, **extra: Any) -> Param:
    return Param(name, "query", {"type": "string", "format": "uuid"}, **extra)


def _date_time(name: str) -> Param:
    return Param(name, "query", {"type": "string", "format": "date-time"})


def _index(name: str, description: str) -> Param:
    return Param(name, "query", {"type": "integer", "minimum": 0, "maximum": INT32_MAX}, description=description)


JOB_FORM: dict[str, Any] = {
    "type": "object",
    "required": ["image", "prompts"],
    "properties": {
        "image": {"type": "string", "contentMediaType": "application/octet-stream"},
        "prompts": {"type": "string", "example": "liver & kidney"},
        "options": {"type": "string", "description": "JSON of JobOptions"},
        **FORM_FIELDS,
    },
}
RESULT_FORMATS = ["png", "npz", "rle", "overlay", "nifti", "dicom-seg"]
OPERATOR_ONLY = (
    "Operator only: the credential whose SHA-256 is MEDPARSE_OPERATOR_TOKEN_SHA256 (or the CLI). "
    "A tenant's key, admin or not, gets 403 operator_required."
)
TENANT_ADMIN = (
    "The operator, or an admin key of the tenant itself; another tenant's admin key gets the 404 of a "
    "tenant (or key) that does not exist."
)
SECRET_ROTATED = "the new secret; the old one keeps signing during the overlap"

ROUTES: tuple[Route, ...] = (
    # Jobs (gateway/jobs/handlers.py)
    Route("POST", "/v1/jobs", jobs.create_job, "create_job", "Submit an image and prompts", "jobs",
          (Reply(202, "accepted", JobPublic),), (400, 413, 415, 422), (WRITE,),
          params=(PREFER,), body=Body(JobCreateJson, form=JOB_FORM)),
    Route("GET", "/v1/jobs", jobs.list_jobs, "list_jobs", "List the tenant's jobs", "jobs",
          (Reply(200, "jobs, newest first", JobsPublic),), (400,), (READ,),
          params=(Param("status", "query", {"type": "string"}), LIMIT, CURSOR)),
    Route("GET", "/v1/jobs/{job_id}", jobs.get_job, "get_job", "Read a job", "jobs",
          (Reply(200, "the job", JobPublic),), (404,), (READ,), params=(PREFER,)),
    Route("DELETE", "/v1/jobs/{job_id}", jobs.delete_job, "delete_job", "Delete a job and all its data", "jobs",
          (Reply(204, "the job and all its data are gone"),), (404,), (WRITE,)),
    Route("POST", "/v1/jobs/{job_id}/cancel", jobs.cancel_job, "cancel_job", "Cancel a job", "jobs",
          (Reply(200, "canceled", JobPublic),), (404, 409), (WRITE,)),
    # Results (gateway/results/handlers.py)
    Route("GET", "/v1/jobs/{job_id}/masks.npz", results.get_masks_npz, "get_masks_npz", "All masks as npz",
          "results",
          (Reply(200, "uint8 array 'masks' (N, H, W) with 0/1 values", media=("application/octet-stream",)),),
          (404, 409), (READ,)),
    Route("GET", "/v1/jobs/{job_id}/masks/{index}", results.get_mask_png, "get_mask_png", "One mask as PNG",
          "results", (Reply(200, "0/255 PNG at the original size", media=("image/png",)),), (404, 409), (READ,)),
    Route("GET", "/v1/jobs/{job_id}/result", results.get_result, "get_result", "A result in any output format",
          "results",
          (Reply(200, "the result in the requested format", media=(
              "image/png", "application/octet-stream", "application/json", "application/gzip", "application/dicom")),),
          (400, 404, 409, 410), (READ,),
          params=(
              Param("format", "query", {"type": "string", "enum": RESULT_FORMATS}, required=True),
              _index("mask", "one prompt's mask (default all; png: 0)"),
              _index("slice", "volume slice for png/overlay (default: the one with the most mask voxels); "
                              "400 on a 2-D result or another format"),
          ),
          description="every output format of a succeeded job (gateway/results/handlers.py); provenance in the "
                      "body where the format allows and in the Medparse-Provenance header"),
    # Usage, audit and administration (gateway/admin/handlers.py)
    Route("GET", "/v1/usage", admin.get_usage, "get_usage", "A tenant's usage", "usage",
          (Reply(200, "usage of the caller's tenant", UsagePublic),), (400,), (READ, ADMIN, OPERATOR),
          params=(_date_time("from"), _date_time("to"),
                  _uuid_query("tenant_id", description="operator credential only: whose usage")),
          description="The caller's tenant (a key with jobs:read or admin); the operator names one with "
                      "tenant_id. Instants between 1970-01-01 and 9000-01-01."),
    Route("GET", "/v1/operator/audit", admin.get_operator_audit, "operator_audit", "A tenant's audit log",
          "operator",
          (Reply(200, "audit entries: {\"data\": [...]}", media=("application/json",), schema={"type": "object"}),),
          (400,), (OPERATOR,),
          params=(_uuid_query("tenant_id", required=True), _uuid_query("job_id"), _date_time("since"),
                  Param("action", "query", {"type": "string"}),
                  Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000})),
          description="One tenant's audit entries, newest first (operator credential only)."),
    Route("GET", "/v1/admin/tenants", admin.list_tenants, "admin_list_tenants", "List tenants", "admin",
          (Reply(200, "tenants", TenantsPublic),), (), (OPERATOR,), description=OPERATOR_ONLY),
    Route("POST", "/v1/admin/tenants", admin.create_tenant, "admin_create_tenant", "Create a tenant", "admin",
          (Reply(201, "created", TenantPublic),), (409, 422), (OPERATOR,), body=Body(TenantCreate),
          description=OPERATOR_ONLY),
    Route("PATCH", "/v1/admin/tenants/{tenant_id}", admin.update_tenant, "admin_update_tenant",
          "Change a tenant's quotas", "admin", (Reply(200, "updated", TenantPublic),), (404, 422), (OPERATOR,),
          body=Body(TenantQuotasPatch), description=OPERATOR_ONLY),
    Route("GET", "/v1/admin/tenants/{tenant_id}/keys", admin.list_keys, "admin_list_keys", "List a tenant's keys",
          "admin", (Reply(200, "keys (no secrets)", KeysPublic),), (404,), (OPERATOR, ADMIN),
          description=TENANT_ADMIN),
    Route("POST", "/v1/admin/tenants/{tenant_id}/keys", admin.create_key, "admin_create_key", "Mint a key", "admin",
          (Reply(201, "the key, shown once", KeyCreatedPublic),), (404, 422), (OPERATOR, ADMIN),
          body=Body(KeyCreate),
          description=TENANT_ADMIN + " A tenant's admin key grants only scopes it holds (403 scope_not_held "
                                     "otherwise)."),
    Route("POST", "/v1/admin/keys/{key_id}/revoke", admin.revoke_key, "admin_revoke_key", "Revoke a key", "admin",
          (Reply(200, "revoked (immediately)", KeyPublic),), (404,), (OPERATOR, ADMIN), description=TENANT_ADMIN),
    # Webhook endpoints (gateway/webhooks/handlers.py). The literal "default" routes come before
    # "{webhook_id}" so they are matched first.
    Route("GET", "/v1/webhooks/default/secret", webhooks.get_default_secret, "get_default_webhook_secret",
          "Read the default webhook secret", "webhooks",
          (Reply(200, "the tenant's default secret (signs per-job webhook_url calls)", SecretPublic),), (),
          (WRITE, ADMIN)),
    Route("POST", "/v1/webhooks/default/rotate-secret", webhooks.rotate_default_secret,
          "rotate_default_webhook_secret", "Rotate the default webhook secret", "webhooks",
          (Reply(200, SECRET_ROTATED, SecretPublic),), (), (WRITE, ADMIN)),
    Route("POST", "/v1/webhooks", webhooks.create_webhook, "create_webhook", "Create a webhook endpoint", "webhooks",
          (Reply(201, "created; the response carries its secret", WebhookCreatedPublic),), (409, 422), (WRITE,),
          body=Body(WebhookCreate)),
    Route("GET", "/v1/webhooks", webhooks.list_webhooks, "list_webhooks", "List webhook endpoints", "webhooks",
          (Reply(200, "the tenant's webhook endpoints", WebhooksPublic),), (), (READ, ADMIN)),
    Route("GET", "/v1/webhooks/{webhook_id}", webhooks.get_webhook, "get_webhook", "Read a webhook endpoint",
          "webhooks", (Reply(200, "the endpoint", WebhookPublic),), (404,), (READ, ADMIN)),
    Route("PATCH", "/v1/webhooks/{webhook_id}", webhooks.update_webhook, "update_webhook",
          "Change a webhook endpoint", "webhooks", (Reply(200, "updated", WebhookPublic),), (404, 422), (WRITE,),
          body=Body(WebhookUpdate)),
    Route("DELETE", "/v1/webhooks/{webhook_id}", webhooks.delete_webhook, "delete_webhook",
          "Delete a webhook endpoint", "webhooks", (Reply(204, "deleted with its deliveries"),), (404,),
          (WRITE, ADMIN)),
    Route("GET", "/v1/webhooks/{webhook_id}/secret", webhooks.get_webhook_secret, "get_webhook_secret",
          "Read an endpoint's secret", "webhooks", (Reply(200, "the endpoint's signing secret", SecretPublic),),
          (404,), (WRITE, ADMIN)),
    Route("POST", "/v1/webhooks/{webhook_id}/rotate-secret", webhooks.rotate_webhook_secret, "rotate_webhook_secret",
          "Rotate an endpoint's secret", "webhooks", (Reply(200, SECRET_ROTATED, SecretPublic),), (404,),
          (WRITE, ADMIN)),
    # Webhook deliveries (gateway/webhooks/handlers.py)
    Route("GET", "/v1/webhooks/{webhook_id}/deliveries", webhooks.list_webhook_deliveries, "list_webhook_deliveries",
          "List an endpoint's deliveries", "deliveries",
          (Reply(200, "the endpoint's deliveries with their attempts, newest first", DeliveriesPublic),), (400, 404),
          (READ,), params=DELIVERY_PAGE),
    Route("GET", "/v1/jobs/{job_id}/deliveries", webhooks.list_job_deliveries, "list_job_deliveries",
          "List a job's deliveries", "deliveries",
          (Reply(200, "the job's deliveries (its webhook_url and the endpoints) with attempts", DeliveriesPublic),),
          (400, 404), (READ,), params=DELIVERY_PAGE),
    Route("GET", "/v1/deliveries", webhooks.list_all_deliveries, "list_deliveries", "List the tenant's deliveries",
          "deliveries",
          (Reply(200, "all the tenant's deliveries, newest first (status=failed: what to replay)", DeliveriesPublic),),
          (400,), (READ,), params=DELIVERY_PAGE),
    Route("GET", "/v1/deliveries/{delivery_id}", webhooks.get_delivery, "get_delivery", "Read a delivery",
          "deliveries", (Reply(200, "one delivery with its attempts", DeliveryPublic),), (404,), (READ,)),
    Route("POST", "/v1/deliveries/{delivery_id}/redeliver", webhooks.redeliver, "redeliver_delivery",
          "Send a delivery again", "deliveries",
          (Reply(202, "queued to be sent again now: same webhook-id, fresh retry schedule", DeliveryPublic),),
          (404, 409), (WRITE,)),
    # Outside /v1: no credential.
    Route("GET", "/healthz", jobs.healthz, "healthz", "Liveness", "health", (Reply(200, "alive", HealthPublic),)),
    Route("GET", "/readyz", jobs.readyz, "readyz", "Readiness: database and queue", "health",
          (Reply(200, "ready", HealthPublic), Reply(503, "not ready", HealthPublic))),
    Route("GET", "/openapi.json", openapi.serve, "openapi", "This document", "meta",
          (Reply(200, "the OpenAPI 3.1 document", media=("application/json",), schema={"type": "object"}),)),
)


def setup_routes(app: web.Application) -> None:
    for route in ROUTES:
        if route.method == "GET":  # add_get also answers HEAD
            app.router.add_get(route.path, route.handler, name=route.name)
        else:
            app.router.add_route(route.method, route.path, route.handler, name=route.name)
