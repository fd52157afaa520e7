"""Thin handlers of the admin API and of ``GET /v1/usage``.

Who may do what (gateway/http/auth.py): tenants and their quotas are the operator's; a tenant's keys are
the operator's or that tenant's own ``admin`` keys'; usage is readable by the tenant (``jobs:read``
or ``admin``) and by the operator (``?tenant_id=``).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

from aiohttp import web

from gateway.admin import services
from gateway.admin.schemas import KeyCreate, KeysPublic, TenantCreate, TenantQuotasPatch, TenantsPublic
from gateway.http.auth import ADMIN, OPERATOR, Principal, admin_of, operator, principal
from gateway.http.params import json_response, parse_body, path_uuid, query_datetime
from gateway.http.problems import ApiProblem, field_error, not_found
from gateway.keys import ENGINE, SETTINGS

#: Key ids are ``secrets.token_hex(6)``; db/tenants.parse_api_key accepts up to 32 characters.
_KEY_ID = re.compile(r"[A-Za-z0-9]{1,32}")
#: The instants ``/v1/usage`` accepts: wide enough for any bill, narrow enough that the 30-day
#: default window and the shift to UTC stay within what datetime and Postgres can hold.
USAGE_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
USAGE_LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def _tenant_id(request: web.Request) -> uuid.UUID:
    return path_uuid(request, "tenant_id", "tenant")


async def list_tenants(request: web.Request) -> web.Response:
    operator(request)
    return json_response(TenantsPublic(data=await services.list_tenants(request.app[ENGINE])))


async def create_tenant(request: web.Request) -> web.Response:
    operator(request)
    tenant = await services.create_tenant(request.app[ENGINE], await parse_body(request, TenantCreate, empty=b"{}"))
    return json_response(tenant, status=201)


async def update_tenant(request: web.Request) -> web.Response:
    operator(request)
    patch = await parse_body(request, TenantQuotasPatch, empty=b"{}")
    return json_response(await services.update_tenant(request.app[ENGINE], _tenant_id(request), patch))


async def list_keys(request: web.Request) -> web.Response:
    tenant_id = _tenant_id(request)
    admin_of(request, tenant_id)
    return json_response(KeysPublic(data=await services.list_keys(request.app[ENGINE], tenant_id)))


async def create_key(request: web.Request) -> web.Response:
    tenant_id = _tenant_id(request)
    who = admin_of(request, tenant_id)
    body = await parse_body(request, KeyCreate, empty=b"{}")
    if isinstance(who, Principal) and (missing := sorted(set(body.scopes) - who.scopes)):
        # No escalation: an admin key that may not read jobs cannot mint one that may.
        message = f"this API key may grant only the scopes it holds itself; it lacks {', '.join(missing)}"
        raise ApiProblem(
            403, "scope_not_held", f"scopes: {message}", fields=[{"field": "scopes", "message": message}]
        )
    if isinstance(who, Principal) and who.expires_at is not None and (
        body.expires_at is None or body.expires_at > who.expires_at
    ):
        # Nor outliving itself: a stolen short-lived admin key must not mint a key that never expires.
        body = body.model_copy(update={"expires_at": who.expires_at})
    return json_response(await services.create_key(request.app[ENGINE], tenant_id, body), status=201)


async def revoke_key(request: web.Request) -> web.Response:
    key_id = request.match_info["key_id"]
    if not _KEY_ID.fullmatch(key_id):
        raise not_found("key")
    # The operator revokes any key; a tenant's admin only its own tenant's (another's: 404).
    only_of = None if OPERATOR in request else principal(request, ADMIN).tenant_id
    return json_response(await services.revoke_key(request.app[ENGINE], key_id, tenant_id=only_of))


def _when(request: web.Request, name: str, default: datetime) -> datetime:
    value = query_datetime(request, name)
    if value is None:
        return default
    if not USAGE_EARLIEST <= value <= USAGE_LATEST:
        raise field_error(name, f"between {USAGE_EARLIEST.date()} and {USAGE_LATEST.date()}", status=400)
    return value


def _usage_tenant(request: web.Request) -> uuid.UUID:
    """The caller's own tenant; the operator names one with ``?tenant_id=``."""
    if OPERATOR not in request:
        return principal(request, "jobs:read", ADMIN).tenant_id
    try:
        return uuid.UUID(request.query.get("tenant_id", ""))
    except ValueError:
        raise field_error("tenant_id", "the operator names the tenant: ?tenant_id=<uuid>", status=400) from None


async def get_usage(request: web.Request) -> web.Response:
    tenant_id = _usage_tenant(request)
    if OPERATOR in request:
        await services.require_tenant(request.app[ENGINE], tenant_id)
    end = _when(request, "to", datetime.now(UTC) + timedelta(seconds=1))
    start = _when(request, "from", max(end - timedelta(days=30), USAGE_EARLIEST))
    if start >= end:
        raise field_error("from", "must be before 'to'", status=400)
    usage = await services.usage(
        request.app[ENGINE], tenant_id, start, end, request.app[SETTINGS].tenant_max_stored_bytes
    )
    return web.Response(body=usage.model_dump_json(by_alias=True), content_type="application/json")
