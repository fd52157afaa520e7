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
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from aiohttp import web

from db.audit import AuditEntry, append_entry
from gateway.http.auth import OPERATOR, PRINCIPAL
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
        await append_entry(request.app[ENGINE], entry_for(request, action, rid))
    if not response.prepared:
        response.headers["X-Request-Id"] = rid
    return response
