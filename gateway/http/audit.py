"""Audit entries for the API: which key read a job's result or masks, deleted or canceled a job,
minted or revoked a key, read or rotated a webhook secret, or took an operator action.

One middleware writes them, from the route table (``AUDITED``), so no handler can forget. The entry
is one autocommitted INSERT (one round trip), written after the handler succeeded and before its
response is sent: if it cannot be written the client gets the 503 of a database error instead of
the data, so a read never goes unrecorded. A mutation is committed by its handler first; if the
audit INSERT then fails the client sees 503 for a change that happened (and the log misses it):
the one gap, for a database that failed between two statements.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from db.audit import INSERT_ENTRY, AuditEntry, select_entries
from gateway.http.auth import OPERATOR, PRINCIPAL, operator
from gateway.http.params import bounded_int, query_datetime
from gateway.http.problems import field_error
from gateway.http.tenancy import tenant_transaction
from gateway.keys import ENGINE

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: route name -> action. Job status reads and listings are not audited (they carry no result).
AUDITED: dict[str, str] = {
    "get_result": "job.result.read",
    "get_mask_png": "job.mask.read",
    "get_masks_npz": "job.masks.read",
    "delete_job": "job.delete",
    "cancel_job": "job.cancel",
    "admin_create_tenant": "tenant.create",
    "admin_update_tenant": "tenant.update",
    "admin_create_key": "key.mint",
    "admin_revoke_key": "key.revoke",
    "get_default_webhook_secret": "webhook.secret.read",
    "get_webhook_secret": "webhook.secret.read",
    "rotate_default_webhook_secret": "webhook.secret.rotate",
    "rotate_webhook_secret": "webhook.secret.rotate",
    "create_webhook": "webhook.create",
    "update_webhook": "webhook.update",
    "delete_webhook": "webhook.delete",
    "redeliver_delivery": "delivery.redeliver",
}
#: Every operator route is audited, reads included, under ``operator.<route name>``.
OPERATOR_PREFIX = "/v1/operator/"
_TOKEN = re.compile(r"[A-Za-z0-9._:-]{1,64}")
#: match_info name -> how the target is written (a job id has its own column)
_TARGETS = (("key_id", "key"), ("webhook_id", "webhook"), ("delivery_id", "delivery"), ("tenant_id", "tenant"))


def action_of(request: web.Request) -> str | None:
    route = request.match_info.route.name
    if request.path.startswith(OPERATOR_PREFIX):
        return f"operator.{route or 'request'}"
    return AUDITED.get(route or "")


def request_id(request: web.Request) -> str:
    """The caller's X-Request-Id when it is a plain token, else a new one."""
    given = request.headers.get("X-Request-Id", "")
    return given if _TOKEN.fullmatch(given) else uuid.uuid4().hex


def entry_for(request: web.Request, action: str, rid: str) -> AuditEntry:
    who = request.get(PRINCIPAL)
    op = request.get(OPERATOR)
    info = request.match_info
    target = next((f"{kind}:{info[name]}"[:200] for name, kind in _TARGETS if name in info), None)
    fmt = request.query.get("format")
    if fmt and _TOKEN.fullmatch(fmt):
        target = f"format:{fmt}" if target is None else target
    return AuditEntry(
        at=datetime.now(UTC),
        actor="operator" if op is not None else "key",
        action=action,
        tenant_id=who.tenant_id if who is not None else _uuid(info.get("tenant_id") or request.query.get("tenant_id")),
        # the operator credential's name (``operator#1``), never the token
        key_id=who.key_id if who is not None else op.credential[:32] if op is not None else None,
        job_id=_uuid(info.get("job_id")),
        target=target,
        request_id=rid,
    )


async def record(engine: AsyncEngine, entry: AuditEntry) -> None:
    async with engine.connect() as conn:
        # One statement: autocommit spares the BEGIN and COMMIT round trips around it.
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(INSERT_ENTRY, entry.params())


def _uuid(value: str | None) -> uuid.UUID | None:
    if not value:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


@web.middleware
async def audit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    action = action_of(request)
    if action is None:
        return await handler(request)
    rid = request_id(request)
    response = await handler(request)
    if response.status < 400:  # a refused request read or changed nothing
        await record(request.app[ENGINE], entry_for(request, action, rid))
    if not response.prepared:
        response.headers["X-Request-Id"] = rid
    return response


def _query_uuid(request: web.Request, name: str, *, required: bool = False) -> uuid.UUID | None:
    raw = request.query.get(name)
    if not raw:
        if required:
            raise field_error(name, "required: the operator reads one tenant's entries (the CLI reads all)", status=400)
        return None
    value = _uuid(raw)
    if value is None:
        raise field_error(name, "a UUID", status=400)
    return value


def _query_limit(request: web.Request) -> int:
    # bounded_int: str.isdigit() admitted '²', which int() refuses (a 500), and 5000 digits
    return bounded_int(request.query.get("limit", "100"), "limit", 1, MAX_LIMIT)


MAX_LIMIT = 1000


async def get_operator_audit(request: web.Request) -> web.Response:
    """``GET /v1/operator/audit?tenant_id=&job_id=&since=&action=&limit=``: one tenant's entries,
    newest first (operator only). The gateway's role reads them under the tenant's row-level scope."""
    operator(request)
    tenant_id = _query_uuid(request, "tenant_id", required=True)
    assert tenant_id is not None
    action = request.query.get("action") or None
    if action is not None and not _TOKEN.fullmatch(action):
        raise field_error("action", "an action name such as job.delete", status=400)
    stmt = select_entries(
        tenant_id=tenant_id, job_id=_query_uuid(request, "job_id"), since=query_datetime(request, "since"),
        action=action, limit=_query_limit(request),
    )
    async with tenant_transaction(request.app[ENGINE], tenant_id) as conn:
        rows = (await conn.execute(stmt)).mappings().all()
    return web.Response(
        body=orjson.dumps({"data": [entry_json(r) for r in rows]}), content_type="application/json"
    )


def entry_json(row: Mapping[Any, Any]) -> dict[str, Any]:
    at = row["at"] if row["at"].tzinfo else row["at"].replace(tzinfo=UTC)  # SQLite: naive UTC
    return {
        "id": row["id"], "at": at.isoformat(), "actor": row["actor"], "action": row["action"],
        "tenant_id": str(row["tenant_id"]) if row["tenant_id"] else None, "key_id": row["key_id"],
        "job_id": str(row["job_id"]) if row["job_id"] else None, "target": row["target"],
        "request_id": row["request_id"],
    }
