"""The route table: one place that lists every endpoint of the API."""

from __future__ import annotations

from aiohttp import web

from gateway import openapi
from gateway.admin import handlers as admin_handlers
from gateway.http import audit
from gateway.jobs import handlers
from gateway.results import handlers as results
from gateway.webhooks import handlers as webhook_handlers


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/v1/jobs", handlers.create_job, name="create_job")
    app.router.add_get("/v1/jobs", handlers.list_jobs, name="list_jobs")
    app.router.add_get("/v1/jobs/{job_id}", handlers.get_job, name="get_job")
    app.router.add_delete("/v1/jobs/{job_id}", handlers.delete_job, name="delete_job")
    app.router.add_post("/v1/jobs/{job_id}/cancel", handlers.cancel_job, name="cancel_job")
    app.router.add_get("/v1/jobs/{job_id}/masks.npz", handlers.get_masks_npz, name="get_masks_npz")
    app.router.add_get("/v1/jobs/{job_id}/masks/{index}", handlers.get_mask_png, name="get_mask_png")
    app.router.add_get("/v1/jobs/{job_id}/result", results.get_result, name="get_result")  # gateway/results/handlers.py
    app.router.add_get("/v1/usage", admin_handlers.get_usage, name="get_usage")
    app.router.add_get("/v1/operator/audit", audit.get_operator_audit, name="operator_audit")  # gateway/http/audit.py
    app.router.add_get("/v1/admin/tenants", admin_handlers.list_tenants, name="admin_list_tenants")
    app.router.add_post("/v1/admin/tenants", admin_handlers.create_tenant, name="admin_create_tenant")
    app.router.add_patch("/v1/admin/tenants/{tenant_id}", admin_handlers.update_tenant, name="admin_update_tenant")
    app.router.add_get("/v1/admin/tenants/{tenant_id}/keys", admin_handlers.list_keys, name="admin_list_keys")
    app.router.add_post("/v1/admin/tenants/{tenant_id}/keys", admin_handlers.create_key, name="admin_create_key")
    app.router.add_post("/v1/admin/keys/{key_id}/revoke", admin_handlers.revoke_key, name="admin_revoke_key")
    webhook_handlers.setup_webhook_routes(app)  # /v1/webhooks..., /v1/deliveries..., /v1/jobs/{id}/deliveries
    app.router.add_get("/healthz", handlers.healthz, name="healthz")
    app.router.add_get("/readyz", handlers.readyz, name="readyz")
    app.router.add_get("/openapi.json", openapi.serve, name="openapi")
