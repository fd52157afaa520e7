"""The route table: one place that lists every endpoint of the API."""

from __future__ import annotations

from aiohttp import web

from gateway import handlers, openapi


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/v1/jobs", handlers.create_job, name="create_job")
    app.router.add_get("/v1/jobs", handlers.list_jobs, name="list_jobs")
    app.router.add_get("/v1/jobs/{job_id}", handlers.get_job, name="get_job")
    app.router.add_post("/v1/jobs/{job_id}/cancel", handlers.cancel_job, name="cancel_job")
    app.router.add_get("/v1/jobs/{job_id}/masks.npz", handlers.get_masks_npz, name="get_masks_npz")
    app.router.add_get("/v1/jobs/{job_id}/masks/{index}", handlers.get_mask_png, name="get_mask_png")
    app.router.add_get("/healthz", handlers.healthz, name="healthz")
    app.router.add_get("/readyz", handlers.readyz, name="readyz")
    app.router.add_get("/openapi.json", openapi.serve, name="openapi")
