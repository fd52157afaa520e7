"""The gateway's application factory. Resources live in cleanup contexts, one per resource."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from db.engine import make_async_engine
from gateway.deps import GatewayDeps
from gateway.http.audit import audit_middleware
from gateway.http.auth import AuthCache
from gateway.http.idempotency import idempotency_middleware
from gateway.http.middleware import auth_middleware, body_deadline_middleware, problems_middleware
from gateway.http.ratelimit import ConcurrentRequests, RateLimiter
from gateway.jobs.dispatch import DispatchNudger
from gateway.jobs.events import JobEventListener
from gateway.jobs.writer import JobWriter
from gateway.keys import (
    AUTH_CACHE,
    CONCURRENT_REQUESTS,
    DECODE_POOL,
    DEPS,
    ENGINE,
    EVENTS,
    JOB_WRITER,
    NUDGER,
    QUEUED_GAUGE,
    RATE_LIMITER,
    SETTINGS,
)
from gateway.routes import setup_routes
from gateway.tenancy import QueuedJobsGauge
from medparse.decode_pool import DEFAULT_PRELOAD, DecodePool
from medparse.settings import Settings, masked_url

log = logging.getLogger(__name__)


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[ENGINE] = make_async_engine(settings)
    app[JOB_WRITER] = JobWriter(app[ENGINE], settings)
    log.info("database %s", masked_url(settings.async_database_url))
    yield
    await app[JOB_WRITER].close()
    await app[ENGINE].dispose()


async def _nudger(app: web.Application) -> AsyncIterator[None]:
    nudger = DispatchNudger(app[SETTINGS])
    nudger.start()
    app[NUDGER] = nudger
    yield
    await nudger.close()


async def _rate_limiter(app: web.Application) -> AsyncIterator[None]:
    app[RATE_LIMITER] = RateLimiter(app[SETTINGS])
    yield
    await app[RATE_LIMITER].close()


async def _events(app: web.Application) -> AsyncIterator[None]:
    events = JobEventListener(app[SETTINGS])
    await events.start()
    app[EVENTS] = events
    yield
    await events.close()


async def _decode_pool(app: web.Application) -> AsyncIterator[None]:
    # Processes start on the first decode, so an app that never decodes (most tests) pays nothing.
    preload = (*DEFAULT_PRELOAD, "gateway.jobs.medical", "gateway.results.render")
    pool = DecodePool.from_settings(app[SETTINGS], preload=preload)
    app[DECODE_POOL] = pool
    yield
    await asyncio.to_thread(pool.close)


async def _deps(app: web.Application) -> AsyncIterator[None]:
    # Last: every resource it holds was started by the contexts before it.
    app[DEPS] = GatewayDeps(
        engine=app[ENGINE], settings=app[SETTINGS], writer=app[JOB_WRITER], nudger=app[NUDGER],
        events=app[EVENTS], decode_pool=app[DECODE_POOL], queued_gauge=app[QUEUED_GAUGE],
    )
    yield


def create_app(settings: Settings) -> web.Application:
    # client_max_size bounds every body aiohttp reads for us (JSON); multipart parts are
    # counted by our own reader as they stream in.
    app = web.Application(
        client_max_size=settings.max_body_bytes + 64 * 1024,
        middlewares=[
            body_deadline_middleware, problems_middleware, auth_middleware, audit_middleware, idempotency_middleware,
        ],
    )
    app[SETTINGS] = settings
    app[AUTH_CACHE] = AuthCache(settings.auth_cache_ttl_s)
    app[CONCURRENT_REQUESTS] = ConcurrentRequests(settings.tenant_max_concurrent_requests)
    app[QUEUED_GAUGE] = QueuedJobsGauge()
    app.cleanup_ctx.extend([_database, _nudger, _rate_limiter, _events, _decode_pool, _deps])
    setup_routes(app)
    return app
