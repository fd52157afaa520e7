"""The floor of bench/latency.py: the least a service with this pipeline must do, and nothing else.

``bench/latency.py`` starts it beside the real gateway and samples it in the same run, so the
gateway's added latency reads against what the pipeline itself costs on this machine, as
bench/accept.py reads the gateway's throughput against a raw aiohttp + asyncpg + LPUSH server.

What a job goes through here, each step the issue requires and done the cheapest way we know:
1. aiohttp reads the multipart upload (no auth, no rate limit, no image check, no quota);
2. one asyncpg INSERT of the job with its image bytes, committed (synchronous commit: durable);
3. the job id is published to Celery (``send_task`` in a thread: never on the event loop);
4. a Celery worker (threads pool) claims it with one UPDATE ... RETURNING the image (autocommit);
5. ``workers.pipeline.segment`` calls the emulator exactly as the direct path does;
6. the masks and the succeeded status are written in one transaction;
7. the result goes back over Redis pub/sub to the waiting request, which answers it.
Left out on purpose, because they are ours and not the pipeline's: API keys, tenant scope and
row-level security, rate limits and quotas, image validation, fair dispatch across tenants, the
cross-process in-flight cap, leases and heartbeats, idempotency, webhooks, the job JSON.

Run by bench/latency.py as ``python -m bench.latency_floor serve|worker`` with FLOOR_* variables;
the tables come from ``SCHEMA`` (created by the bench in its throwaway database).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent

SCHEMA = """
CREATE TABLE floor_jobs (
    id uuid PRIMARY KEY, status text NOT NULL, prompts jsonb NOT NULL, image bytea,
    created_at timestamptz NOT NULL DEFAULT now(), completed_at timestamptz
);
CREATE TABLE floor_masks (
    job_id uuid NOT NULL REFERENCES floor_jobs (id) ON DELETE CASCADE, index int NOT NULL,
    label text NOT NULL, area_px bigint NOT NULL, bbox jsonb NOT NULL, data bytea NOT NULL,
    PRIMARY KEY (job_id, index)
);
"""
TASK = "floor.run"


def env(name: str) -> str:
    return os.environ[f"FLOOR_{name}"]


def channel() -> str:
    return f"{env('NAMESPACE')}:floor:done"


def queue() -> str:
    return f"{env('NAMESPACE')}:floor"


def make_celery() -> Any:
    from celery import Celery

    app = Celery("medparse-floor", broker=env("REDIS_URL"), set_as_current=True)
    app.conf.update(
        task_default_queue=queue(), task_ignore_result=True, task_acks_late=True,
        worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
        # kombu's own keys (bindings, unacked) under the run's namespace too, as the service keeps them
        broker_transport_options={"global_keyprefix": f"{env('NAMESPACE')}:floor:"},
    )
    return app


# --- the worker ------------------------------------------------------------------------------------

def run_worker() -> None:
    import psycopg
    import redis

    from medparse.endpoint.client import EndpointClient
    from medparse.endpoint.limiter import LocalInFlightLimiter
    from medparse.settings import Settings
    from workers.batching import RowBatcher
    from workers.pipeline import segment

    settings = Settings(
        endpoint_scoring_uri=env("SCORING_URI"), endpoint_key=env("ENDPOINT_KEY"), log_level="WARNING",
        data_dir=Path(env("DATA_DIR")),
    )
    batcher = RowBatcher(EndpointClient(settings, limiter=LocalInFlightLimiter(8)), 1, 0.0)
    publisher = redis.Redis.from_url(env("REDIS_URL"))
    local = threading.local()

    def connection() -> psycopg.Connection[Any]:
        if getattr(local, "conn", None) is None:
            local.conn = psycopg.connect(env("PG_URL"), autocommit=True)
        return local.conn  # type: ignore[no-any-return]

    app = make_celery()

    @app.task(name=TASK, acks_late=True, ignore_result=True)
    def run(job_id: str) -> None:
        conn = connection()
        row = conn.execute(
            "UPDATE floor_jobs SET status = 'running' WHERE id = %s AND status = 'queued' RETURNING prompts, image",
            (job_id,),
        ).fetchone()
        if row is None:
            return
        prompts, image = row
        result = segment(bytes(image), list(prompts), settings=settings, batcher=batcher, job_id=job_id)
        masks = [{"index": m.index, "label": m.label, "area_px": m.area_px, "bbox": m.bbox} for m in result.masks]
        with conn.transaction():
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO floor_masks (job_id, index, label, area_px, bbox, data)"
                    " VALUES (%s, %s, %s, %s, %s, %s)",
                    [(job_id, m.index, m.label, m.area_px, orjson.dumps(m.bbox).decode(), m.data)
                     for m in result.masks],
                )
            conn.execute(
                "UPDATE floor_jobs SET status = 'succeeded', completed_at = now() WHERE id = %s AND status = 'running'",
                (job_id,),
            )
        publisher.publish(channel(), orjson.dumps({"id": job_id, "status": "succeeded", "masks": masks}))

    app.worker_main([
        "worker", "--pool=threads", "--concurrency=2", "--without-gossip", "--without-mingle",
        "--without-heartbeat", f"--queues={queue()}", "--loglevel=WARNING",
    ])


# --- the server ------------------------------------------------------------------------------------

async def listen(redis_url: str, waiters: dict[str, asyncio.Future[bytes]]) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
        await pubsub.subscribe(channel())
        async for message in pubsub.listen():
            body = message["data"]
            waiter = waiters.pop(orjson.loads(body)["id"], None)
            if waiter is not None and not waiter.done():
                waiter.set_result(body)


def run_server() -> None:
    import asyncpg
    import uvloop
    from aiohttp import web

    app_celery = make_celery()
    publish_pool = ThreadPoolExecutor(4)
    waiters: dict[str, asyncio.Future[bytes]] = {}
    keys: dict[str, Any] = {}

    async def on_startup(app: web.Application) -> None:
        keys["pool"] = await asyncpg.create_pool(env("PG_URL"), min_size=2, max_size=8)
        keys["listener"] = asyncio.get_running_loop().create_task(listen(env("REDIS_URL"), waiters))
        await asyncio.sleep(0.2)  # subscribed before the first job

    async def on_cleanup(app: web.Application) -> None:
        keys["listener"].cancel()
        await keys["pool"].close()

    async def create_job(request: web.Request) -> web.Response:
        form = await request.post()
        upload = form["image"]
        image = upload.file.read() if hasattr(upload, "file") else bytes(upload)  # type: ignore[arg-type]
        prompts = [p.strip() for p in str(form["prompts"]).split("&")]
        job_id = str(uuid.uuid4())
        loop = asyncio.get_running_loop()
        done = waiters[job_id] = loop.create_future()
        try:
            await keys["pool"].execute(
                "INSERT INTO floor_jobs (id, status, prompts, image) VALUES ($1, 'queued', $2::jsonb, $3)",
                uuid.UUID(job_id), orjson.dumps(prompts).decode(), image,
            )
            await loop.run_in_executor(publish_pool, lambda: app_celery.send_task(TASK, args=[job_id]))
            body = await asyncio.wait_for(done, 30)
        finally:
            waiters.pop(job_id, None)
        return web.Response(body=body, content_type="application/json")

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_post("/jobs", create_job)
    app.router.add_get("/healthz", healthz)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=int(env("PORT")), print=None, access_log=None)


if __name__ == "__main__":
    {"serve": run_server, "worker": run_worker}[sys.argv[1]]()
