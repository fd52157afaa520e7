"""Thin handlers of the admin API, of ``GET /v1/usage`` and of ``GET /v1/operator/audit``.

Who may do what (gateway/http/auth.py): tenants and their quotas are the operator's; a tenant's keys are
the operator's or that tenant's own ``admin`` keys'; usage is readable by the tenant (``jobs:read``
or ``admin``) and by the operator (``?tenant_id=``); the audit log by the operator, one tenant at a time.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web

from db.audit import AuditRecord
from db.tenants import KeyRecord, TenantRecord
from gateway.admin import services
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
from gateway.errors import BadQueryField, NotFound
from gateway.http.auth import ADMIN, OPERATOR, Principal, admin_of, operator, principal
from gateway.http.idempotency import KeyHandling, handles_key
from gateway.http.params import bounded_int, json_response, parse_body, path_uuid, query_datetime
from gateway.keys import DEPS

#: Key ids are ``secrets.token_hex(6)``; db/tenants.parse_api_key accepts up to 32 characters.
_KEY_ID = re.compile(r"[A-Za-z0-9]{1,32}")
#: The instants ``/v1/usage`` accepts: wide enough for any bill, narrow enough that the 30-day
#: default window and the shift to UTC stay within what datetime and Postgres can hold.
USAGE_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
USAGE_LATEST = datetime(9000, 1, 1, tzinfo=UTC)


#: An audit action name (``job.delete``, ``operator.operator_audit``), as the audit middleware writes them.
_ACTION = re.compile(r"[A-Za-z0-9._:-]{1,64}")
#: The most audit entries one read returns.
MAX_AUDIT_LIMIT = 1000


def _tenant_id(request: web.Request) -> uuid.UUID:
    return path_uuid(request, "tenant_id", "tenant")


def _tenant_json(tenant: TenantRecord) -> TenantPublic:
    return TenantPublic.model_validate(tenant, from_attributes=True)


def _key_json(key: KeyRecord) -> KeyPublic:
    return KeyPublic.model_validate(key, from_attributes=True)


async def list_tenants(request: web.Request) -> web.Response:
    operator(request)
    tenants = await services.list_tenants(request.app[DEPS])
    return json_response(TenantsPublic(data=[_tenant_json(t) for t in tenants]))


async def create_tenant(request: web.Request) -> web.Response:
    operator(request)
    body = await parse_body(request, TenantCreate, empty=b"{}")
    quotas = body.model_dump(exclude={"name"}, exclude_none=True)
    return json_response(_tenant_json(await services.create_tenant(request.app[DEPS], body.name, quotas)), status=201)


async def update_tenant(request: web.Request) -> web.Response:
    operator(request)
    patch = await parse_body(request, TenantQuotasPatch, empty=b"{}")
    tenant = await services.update_tenant(request.app[DEPS], _tenant_id(request), patch.model_dump(exclude_unset=True))
    return json_response(_tenant_json(tenant))


async def list_keys(request: web.Request) -> web.Response:
    tenant_id = _tenant_id(request)
    admin_of(request, tenant_id)
    keys = await services.list_keys(request.app[DEPS], tenant_id)
    return json_response(KeysPublic(data=[_key_json(k) for k in keys]))


@handles_key(KeyHandling.REFUSED)  # the answer holds the new key
async def create_key(request: web.Request) -> web.Response:
    tenant_id = _tenant_id(request)
    who = admin_of(request, tenant_id)
    body = await parse_body(request, KeyCreate, empty=b"{}")
    # A tenant's admin key grants no more than it holds (the operator: anything).
    grantor = services.Grantor(who.scopes, who.expires_at) if isinstance(who, Principal) else None
    made = await services.create_key(
        request.app[DEPS], tenant_id, sorted(set(body.scopes)), label=body.label, expires_at=body.expires_at,
        grantor=grantor,
    )
    created = KeyCreatedPublic.model_validate({**_key_json(made.key).model_dump(), "key": made.plaintext})
    return json_response(created, status=201)


async def revoke_key(request: web.Request) -> web.Response:
    key_id = request.match_info["key_id"]
    if not _KEY_ID.fullmatch(key_id):
        raise NotFound("key")
    # The operator revokes any key; a tenant's admin only its own tenant's (another's: 404).
    only_of = None if OPERATOR in request else principal(request, ADMIN).tenant_id
    return json_response(_key_json(await services.revoke_key(request.app[DEPS], key_id, tenant_id=only_of)))


def _when(request: web.Request, name: str, default: datetime) -> datetime:
    value = query_datetime(request, name)
    if value is None:
        return default
    if not USAGE_EARLIEST <= value <= USAGE_LATEST:
        raise BadQueryField(name, f"between {USAGE_EARLIEST.date()} and {USAGE_LATEST.date()}")
    return value


def _usage_tenant(request: web.Request) -> uuid.UUID:
    """The caller's own tenant; the operator names one with ``?tenant_id=``."""
    if OPERATOR not in request:
        return principal(request, "jobs:read", ADMIN).tenant_id
    try:
        return uuid.UUID(request.query.get("tenant_id", ""))
    except ValueError:
        raise BadQueryField("tenant_id", "the operator names the tenant: ?tenant_id=<uuid>") from None


async def get_usage(request: web.Request) -> web.Response:
    tenant_id = _usage_tenant(request)
    deps = request.app[DEPS]
    if OPERATOR in request:
        await services.require_tenant(deps, tenant_id)
    end = _when(request, "to", datetime.now(UTC) + timedelta(seconds=1))
    start = _when(request, "from", max(end - timedelta(days=30), USAGE_EARLIEST))
    if start >= end:
        raise BadQueryField("from", "must be before 'to'")
    usage = UsagePublic.model_validate(await services.usage(deps, tenant_id, start, end), from_attributes=True)
    return web.Response(body=usage.model_dump_json(by_alias=True), content_type="application/json")


def _query_uuid(request: web.Request, name: str) -> uuid.UUID | None:
    raw = request.query.get(name)
    if not raw:
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise BadQueryField(name, "a UUID") from None


async def get_operator_audit(request: web.Request) -> web.Response:
    """``GET /v1/operator/audit?tenant_id=&job_id=&since=&action=&limit=``: one tenant's entries,
    newest first (operator only). The gateway's role reads them under the tenant's row-level scope."""
    operator(request)
    tenant_id = _query_uuid(request, "tenant_id")
    if tenant_id is None:
        raise BadQueryField("tenant_id", "required: the operator reads one tenant's entries (the CLI reads all)")
    action = request.query.get("action") or None
    if action is not None and not _ACTION.fullmatch(action):
        raise BadQueryField("action", "an action name such as job.delete")
    entries = await services.audit_entries(
        request.app[DEPS], tenant_id=tenant_id, job_id=_query_uuid(request, "job_id"),
        since=query_datetime(request, "since"), action=action,
        # bounded_int: str.isdigit() admitted '²', which int() refuses (a 500), and 5000 digits
        limit=bounded_int(request.query.get("limit", "100"), "limit", 1, MAX_AUDIT_LIMIT),
    )
    return web.Response(
        body=orjson.dumps({"data": [audit_entry_json(e) for e in entries]}), content_type="application/json"
    )


def audit_entry_json(entry: AuditRecord) -> dict[str, Any]:
    return {
        "id": entry.id, "at": entry.at.isoformat(), "actor": entry.actor, "action": entry.action,
        "tenant_id": str(entry.tenant_id) if entry.tenant_id else None, "key_id": entry.key_id,
        "job_id": str(entry.job_id) if entry.job_id else None, "target": entry.target,
        "request_id": entry.request_id,
    }
