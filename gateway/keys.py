"""Typed application keys: the gateway's dependency injection (no string keys, no globals)."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.deps import GatewayDeps
from gateway.http.auth import AuthCache
from gateway.http.ratelimit import ConcurrentRequests, RateLimiter
from gateway.jobs.dispatch import DispatchNudger
from gateway.jobs.events import JobEventListener
from gateway.jobs.writer import JobWriter
from gateway.tenancy import QueuedJobsGauge
from medparse.decode_pool import DecodePool
from medparse.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
ENGINE = web.AppKey("engine", AsyncEngine)
NUDGER = web.AppKey("nudger", DispatchNudger)
EVENTS = web.AppKey("events", JobEventListener)
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
CONCURRENT_REQUESTS = web.AppKey("concurrent_requests", ConcurrentRequests)
AUTH_CACHE = web.AppKey("auth_cache", AuthCache)
QUEUED_GAUGE = web.AppKey("queued_gauge", QueuedJobsGauge)
JOB_WRITER = web.AppKey("job_writer", JobWriter)
#: full decodes of uploads and the result renderers run there (medparse/decode_pool.py)
DECODE_POOL = web.AppKey("decode_pool", DecodePool)
#: what the use cases (gateway/*/services.py) are given: see gateway/deps.py
DEPS = web.AppKey("deps", GatewayDeps)
