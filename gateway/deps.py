"""The dependencies of the use cases, built once at start-up and passed in (no globals).

``Store`` is what every use case needs; the admin use cases need nothing more, so the CLI builds a
``Store`` of its own and calls the same services as the API. ``GatewayDeps`` adds the gateway
process's shared resources; ``create_app`` assembles it and keeps it under ``gateway.keys.DEPS``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.jobs.dispatch import DispatchNudger
from gateway.jobs.events import JobEventListener
from gateway.jobs.writer import JobWriter
from gateway.tenancy import QueuedJobsGauge
from medparse.decode_pool import DecodePool
from medparse.settings import Settings


@dataclass(frozen=True)
class Store:
    engine: AsyncEngine
    settings: Settings


@dataclass(frozen=True)
class GatewayDeps(Store):
    writer: JobWriter
    nudger: DispatchNudger
    events: JobEventListener
    decode_pool: DecodePool
    queued_gauge: QueuedJobsGauge
