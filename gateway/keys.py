"""Typed application keys: the gateway's dependency injection (no string keys, no globals)."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.dispatch import JobPublisher
from gateway.events import JobEventListener
from medparse.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
ENGINE = web.AppKey("engine", AsyncEngine)
PUBLISHER = web.AppKey("publisher", JobPublisher)
EVENTS = web.AppKey("events", JobEventListener)
