"""Thin handlers of the admin API (``admin`` scope) and of ``GET /v1/usage``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from aiohttp import web

from gateway import admin_services as services
from gateway.admin_schemas import KeyCreate, KeysPublic, TenantCreate, TenantQuotasPatch, TenantsPublic
from gateway.auth import principal
from gateway.handlers import json_response, parse_body, path_uuid
from gateway.keys import ENGINE
from gateway.problems import field_error


def _tenant_id(request: web.Request) -> uuid.UUID:
    return path_uuid(request, "tenant_id", "tenant")


async def list_tenants(request: web.Request) -> web.Response:
    principal(request, "admin")
    return json_response(TenantsPublic(data=await services.list_tenants(request.app[ENGINE])))


async def create_tenant(request: web.Request) -> web.Response:
    principal(request, "admin")
    tenant = await services.create_tenant(request.app[ENGINE], await parse_body(request, TenantCreate, empty=b"{}"))
    return json_response(tenant, status=201)


async def update_tenant(request: web.Request) -> web.Response:
    principal(request, "admin")
    patch = await parse_body(request, TenantQuotasPatch, empty=b"{}")
    return json_response(await services.update_tenant(request.app[ENGINE], _tenant_id(request), patch))


async def list_keys(request: web.Request) -> web.Response:
    principal(request, "admin")
    return json_response(KeysPublic(data=await services.list_keys(request.app[ENGINE], _tenant_id(request))))


async def create_key(request: web.Request) -> web.Response:
    principal(request, "admin")
    body = await parse_body(request, KeyCreate, empty=b"{}")
    return json_response(await services.create_key(request.app[ENGINE], _tenant_id(request), body), status=201)


async def revoke_key(request: web.Request) -> web.Response:
    principal(request, "admin")
    return json_response(await services.revoke_key(request.app[ENGINE], request.match_info["key_id"]))


def _when(request: web.Request, name: str, default: datetime) -> datetime:
    raw = request.query.get(name)
    if not raw:
        return default
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise field_error(name, "an ISO 8601 date or date-time", status=400) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


async def get_usage(request: web.Request) -> web.Response:
    who = principal(request, "jobs:read")
    end = _when(request, "to", datetime.now(UTC) + timedelta(seconds=1))
    start = _when(request, "from", end - timedelta(days=30))
    if start >= end:
        raise field_error("from", "must be before 'to'", status=400)
    usage = await services.usage(request.app[ENGINE], who.tenant_id, start, end)
    return web.Response(body=usage.model_dump_json(by_alias=True), content_type="application/json")
