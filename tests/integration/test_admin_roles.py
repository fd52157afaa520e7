"""Operators and tenant admins apart (issue 12): every /v1 route tried with every kind of caller.

The routes are enumerated from the app's router and each must be classified in ``ACCESS`` below,
so a new route cannot escape: an unclassified one fails ``test_every_v1_route_is_classified``.
Real Postgres and Redis, real HTTP (aiohttp's test server).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr
from sqlalchemy import Engine, select, update

from db.engine import make_sync_engine
from db.models import ApiKey
from db.tenants import insert_key_stmt, new_api_key
from gateway.app import create_app
from medparse.settings import Settings
from runtime.cli import create_tenant
from tests.support.factories import random_name
from tests.support.webhooks import insert_job

OPERATOR_TOKEN = "0123456789abcdef" * 4
READ, WRITE, ADMIN = "jobs:read", "jobs:write", "admin"


@dataclass(frozen=True)
class Scopes:
    """A tenant route: a tenant key holding any of these scopes; the operator is refused."""

    allowed: tuple[str, ...]


OPERATOR_ONLY = "operator only"
#: the operator, or an admin key of the tenant the route names (another tenant's: 404)
TENANT_ADMIN = "operator or the tenant's own admin"
#: a tenant's own usage (jobs:read or admin); the operator names a tenant with ?tenant_id=
USAGE = "usage"

ACCESS: dict[str, Scopes | str] = {
    "create_job": Scopes((WRITE,)),
    "list_jobs": Scopes((READ,)),
    "get_job": Scopes((READ,)),
    "delete_job": Scopes((WRITE,)),
    "cancel_job": Scopes((WRITE,)),
    "get_masks_npz": Scopes((READ,)),
    "get_mask_png": Scopes((READ,)),
    "get_result": Scopes((READ,)),
    "get_usage": USAGE,
    "admin_list_tenants": OPERATOR_ONLY,
    "admin_create_tenant": OPERATOR_ONLY,
    "admin_update_tenant": OPERATOR_ONLY,
    "admin_list_keys": TENANT_ADMIN,
    "admin_create_key": TENANT_ADMIN,
    "admin_revoke_key": TENANT_ADMIN,
    "get_default_webhook_secret": Scopes((WRITE, ADMIN)),
    "rotate_default_webhook_secret": Scopes((WRITE, ADMIN)),
    "create_webhook": Scopes((WRITE,)),  # an admin-only key may not direct job events (results) anywhere
    "list_webhooks": Scopes((READ, ADMIN)),
    "get_webhook": Scopes((READ, ADMIN)),
    "update_webhook": Scopes((WRITE,)),
    "delete_webhook": Scopes((WRITE, ADMIN)),
    "get_webhook_secret": Scopes((WRITE, ADMIN)),
    "rotate_webhook_secret": Scopes((WRITE, ADMIN)),
    "list_webhook_deliveries": Scopes((READ,)),
    "list_job_deliveries": Scopes((READ,)),
    "list_deliveries": Scopes((READ,)),
    "get_delivery": Scopes((READ,)),
    "redeliver_delivery": Scopes((WRITE,)),
    "operator_audit": OPERATOR_ONLY,  # gateway/admin/handlers.py
}
#: Query strings a route needs to succeed, given the tenant the request is about.
QUERY = {"operator_audit": lambda tenant: {"tenant_id": str(tenant)}}


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    path: str  # canonical, with {placeholders}


def v1_routes(app: web.Application) -> list[Route]:
    return [
        Route(r.resource.name, r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None and r.resource.name and r.resource.canonical.startswith("/v1/")
    ]


@dataclass
class World:
    api: TestClient
    engine: Engine
    routes: list[Route]
    a: uuid.UUID
    b: uuid.UUID
    a_admin: str  # scopes: admin only
    a_plain: str  # jobs:read + jobs:write
    a_reader: str  # jobs:read only
    a_writer: str  # jobs:write only
    b_reader: str
    b_job: uuid.UUID


@pytest.fixture
async def world(pg_settings: Settings) -> AsyncIterator[World]:
    settings = pg_settings.model_copy(
        update={"operator_token_sha256": SecretStr(hashlib.sha256(OPERATOR_TOKEN.encode()).hexdigest())}
    )
    engine = make_sync_engine(settings)
    a, a_admin = create_tenant(settings, random_name("a"), scopes=[ADMIN])
    a_plain, a_reader, a_writer = (new_key(engine, a, s) for s in ([READ, WRITE], [READ], [WRITE]))
    b, b_reader = create_tenant(settings, random_name("b"), scopes=[READ])
    _, b_job = insert_job(engine, settings, b)
    app = create_app(settings)
    async with TestClient(TestServer(app)) as api:
        yield World(api, engine, v1_routes(app), a, b, a_admin, a_plain, a_reader, a_writer, b_reader, b_job)
    engine.dispose()


def new_key(engine: Engine, tenant_id: uuid.UUID, scopes: list[str]) -> str:
    """A key for an existing tenant, the way ``medparse key create`` makes one."""
    issued, secret_hash = new_api_key()
    with engine.begin() as conn:
        conn.execute(insert_key_stmt(issued, secret_hash, tenant_id, scopes, datetime.now(UTC)))
    return issued.plaintext


def key_id(key: str) -> str:
    return key.split("_")[1]


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def fill(path: str, *, tenant: uuid.UUID, key: str, job: uuid.UUID) -> str:
    return (
        path.replace("{tenant_id}", str(tenant)).replace("{key_id}", key).replace("{job_id}", str(job))
        .replace("{index}", "0").replace("{webhook_id}", str(uuid.uuid4()))
        .replace("{delivery_id}", str(uuid.uuid4()))
    )


def body_for(route: Route) -> dict[str, Any] | None:
    if route.method not in ("POST", "PATCH"):
        return None
    return {
        "admin_create_tenant": {"name": random_name("made")},
        "admin_update_tenant": {"max_running_jobs": 3},
        "admin_create_key": {"scopes": [ADMIN]},
    }.get(route.name, {})


async def call(world: World, route: Route, token: str | None, *, tenant: uuid.UUID, key: str = "0") -> tuple[int, str]:
    query = QUERY[route.name](tenant) if route.name in QUERY else None
    resp = await world.api.request(
        route.method, fill(route.path, tenant=tenant, key=key, job=world.b_job),
        json=body_for(route), headers=bearer(token), params=query,
    )
    if route.method == "HEAD":  # no body: the code of the GET it mirrors, for comparison
        return resp.status, {401: "unauthorized"}.get(resp.status, HEAD_CODE)
    code = ""
    if resp.content_type == "application/problem+json":
        code = (await resp.json())["code"]
    return resp.status, code


class _AnyCode(str):
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str)

    __hash__ = str.__hash__


#: A HEAD answer has no body to read the problem's code from: it compares equal to any code.
HEAD_CODE = _AnyCode("(HEAD: no body)")


def test_every_v1_route_is_classified(pg_settings: Settings) -> None:
    app = create_app(pg_settings)
    # v1_routes lists named routes only: an unnamed one would escape ACCESS (and the audit log's AUDITED)
    unnamed = [r.resource.canonical for r in app.router.routes()
               if r.resource is not None and not r.resource.name and r.resource.canonical.startswith("/v1/")]
    assert not unnamed, f"name these routes (add_get(..., name=...)) and classify them: {unnamed}"
    names = {r.name for r in v1_routes(app)}
    assert names, "no /v1 routes found: the enumeration is broken"
    unclassified = names - ACCESS.keys()
    assert not unclassified, f"classify these routes in ACCESS (who may call them): {sorted(unclassified)}"
    assert not ACCESS.keys() - names, f"ACCESS names routes that no longer exist: {sorted(ACCESS.keys() - names)}"


async def test_admin_and_operator_routes_with_every_kind_of_caller(world: World) -> None:
    admin_routes = [r for r in world.routes if ACCESS[r.name] in (OPERATOR_ONLY, TENANT_ADMIN)]
    assert {r.name for r in admin_routes} >= {"admin_create_key", "admin_list_tenants", "admin_revoke_key"}
    # Every route under /v1/admin or /v1/operator is an operator or tenant-admin route.
    assert all(ACCESS[r.name] in (OPERATOR_ONLY, TENANT_ADMIN)
               for r in world.routes if r.path.startswith(("/v1/admin", "/v1/operator")))
    for route in admin_routes:
        operator_only = ACCESS[route.name] == OPERATOR_ONLY

        def key_of(tenant: uuid.UUID) -> str:  # a fresh one each time: revoking is a success
            return key_id(new_key(world.engine, tenant, [READ]))

        seen = {
            "no key": await call(world, route, None, tenant=world.b, key=key_of(world.b)),
            "A without admin": await call(world, route, world.a_plain, tenant=world.a, key=key_of(world.a)),
            "A's admin on B": await call(world, route, world.a_admin, tenant=world.b, key=key_of(world.b)),
            "A's admin on A": await call(world, route, world.a_admin, tenant=world.a, key=key_of(world.a)),
            "operator on B": await call(world, route, OPERATOR_TOKEN, tenant=world.b, key=key_of(world.b)),
            "wrong operator token": await call(world, route, OPERATOR_TOKEN[::-1], tenant=world.b, key=key_of(world.b)),
        }
        where = f"{route.method} {route.path}: {seen}"
        assert seen["no key"][0] == 401, where
        assert seen["wrong operator token"][0] == 401, where
        assert seen["A without admin"][0] == 403, where
        assert seen["operator on B"][0] in (200, 201), where
        if operator_only:
            assert seen["A's admin on B"] == (403, "operator_required"), where
            assert seen["A's admin on A"] == (403, "operator_required"), where
        else:
            assert seen["A's admin on B"][0] == 404, where  # like a tenant that does not exist
            assert seen["A's admin on A"][0] in (200, 201), where


async def test_tenant_routes_refuse_the_operator_and_keys_without_their_scope(world: World) -> None:
    keys_by_scope = {READ: world.a_reader, WRITE: world.a_writer, ADMIN: world.a_admin}
    for route in world.routes:
        access = ACCESS[route.name]
        if not isinstance(access, Scopes):
            continue
        lacking = [s for s in (READ, WRITE, ADMIN) if s not in access.allowed]
        where = f"{route.method} {route.path}"
        assert (await call(world, route, None, tenant=world.a))[0] == 401, where
        assert await call(world, route, OPERATOR_TOKEN, tenant=world.a) == (403, "tenant_key_required"), where
        for scope in lacking:  # e.g. an admin-only key on a job route: no PHI
            assert await call(world, route, keys_by_scope[scope], tenant=world.a) == (403, "insufficient_scope"), (
                where, scope
            )
        for scope in access.allowed:  # authorized; the random ids may then be 404, a queued job 409
            status, _ = await call(world, route, keys_by_scope[scope], tenant=world.a)
            assert status not in (401, 403) and status < 500, (where, scope, status)


async def test_a_tenant_admin_can_never_get_a_key_that_reads_another_tenants_jobs(world: World) -> None:
    api, b_job, a_admin = world.api, f"/v1/jobs/{world.b_job}", bearer(world.a_admin)
    assert (await api.get(b_job, headers=bearer(world.b_reader))).status == 200  # B's job exists
    # Minting for B: 404 whatever the scopes; minting for A what A's admin key does not hold: 403.
    for scopes in ([READ], [READ, WRITE], [ADMIN], [READ, ADMIN]):
        made = await api.post(f"/v1/admin/tenants/{world.b}/keys", json={"scopes": scopes}, headers=a_admin)
        assert made.status == 404, scopes
    escalate = await api.post(f"/v1/admin/tenants/{world.a}/keys", json={"scopes": [READ]}, headers=a_admin)
    body = await escalate.json()
    assert escalate.status == 403 and body["code"] == "scope_not_held" and body["fields"][0]["field"] == "scopes"
    default = await api.post(f"/v1/admin/tenants/{world.a}/keys", headers=bearer(world.a_admin))
    assert default.status == 403  # the default scopes are jobs:read + jobs:write
    own = await api.post(f"/v1/admin/tenants/{world.a}/keys", json={"scopes": [ADMIN]}, headers=bearer(world.a_admin))
    minted = (await own.json())["key"]
    assert own.status == 201
    # No key A holds or can make reads B's job: admin keys read no jobs, A's readers see only A's.
    for key in (world.a_admin, minted):
        assert (await api.get(b_job, headers=bearer(key))).status == 403
        assert (await api.get(f"{b_job}/result?format=png", headers=bearer(key))).status == 403
    for key in (world.a_reader, world.a_plain):
        assert (await api.get(b_job, headers=bearer(key))).status == 404
        assert (await api.get(f"{b_job}/masks/0", headers=bearer(key))).status == 404
    # Nor can A's admin see B's keys, revoke them or change B's quotas.
    assert (await api.get(f"/v1/admin/tenants/{world.b}/keys", headers=bearer(world.a_admin))).status == 404
    revoke = await api.post(f"/v1/admin/keys/{key_id(world.b_reader)}/revoke", headers=bearer(world.a_admin))
    assert revoke.status == 404
    assert (await api.get(b_job, headers=bearer(world.b_reader))).status == 200  # B's key still works
    patch = await api.patch(f"/v1/admin/tenants/{world.b}", json={"rate_limit_rps": 0.01}, headers=a_admin)
    assert patch.status == 403
    with world.engine.begin() as conn:
        b_keys = conn.execute(select(ApiKey.id, ApiKey.revoked_at).where(ApiKey.tenant_id == world.b)).all()
    assert [(k, r) for k, r in b_keys] == [(key_id(world.b_reader), None)]  # nothing minted or revoked for B


async def test_a_key_minted_by_an_expiring_admin_key_expires_no_later(world: World) -> None:
    ends = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    with world.engine.begin() as conn:
        conn.execute(update(ApiKey).where(ApiKey.id == key_id(world.a_admin)).values(expires_at=ends))
    url, admin = f"/v1/admin/tenants/{world.a}/keys", bearer(world.a_admin)
    forever = await world.api.post(url, json={"scopes": [ADMIN]}, headers=admin)
    later = await world.api.post(url, json={"scopes": [ADMIN], "expires_at": (ends + timedelta(days=9)).isoformat()},
                                 headers=admin)
    sooner_at = ends - timedelta(minutes=30)
    sooner = await world.api.post(url, json={"scopes": [ADMIN], "expires_at": sooner_at.isoformat()}, headers=admin)
    assert (forever.status, later.status, sooner.status) == (201, 201, 201)
    expiries = [datetime.fromisoformat((await r.json())["expires_at"]) for r in (forever, later, sooner)]
    assert expiries == [ends, ends, sooner_at]


async def test_the_operator_manages_any_tenant_but_reads_no_jobs(world: World) -> None:
    api, op = world.api, bearer(OPERATOR_TOKEN)
    made = await api.post(f"/v1/admin/tenants/{world.b}/keys", json={"scopes": [READ]}, headers=op)
    assert made.status == 201
    assert (await api.get(f"/v1/jobs/{world.b_job}", headers=op)).status == 403
    usage = await api.get("/v1/usage", params={"tenant_id": str(world.b)}, headers=op)
    assert usage.status == 200 and (await usage.json())["tenant_id"] == str(world.b)
    assert (await api.get("/v1/usage", headers=op)).status == 400  # which tenant?
    unknown = await api.get("/v1/usage", params={"tenant_id": str(uuid.uuid4())}, headers=op)
    assert unknown.status == 404 and (await unknown.json())["code"] == "tenant_not_found"
    # The operator has no tenant to keep Idempotency-Keys under.
    keyed = await api.post("/v1/admin/tenants", json={"name": random_name()}, headers={**op, "Idempotency-Key": "k"})
    assert keyed.status == 400 and (await keyed.json())["fields"][0]["field"] == "Idempotency-Key"


@pytest.mark.parametrize(
    "token",
    [
        OPERATOR_TOKEN[:-1],  # one character short
        OPERATOR_TOKEN + "x",
        "short",  # below the minimum length, never hashed
        OPERATOR_TOKEN.upper(),
    ],
)
async def test_only_the_exact_operator_token_is_the_operator(world: World, token: str) -> None:
    resp = await world.api.get("/v1/admin/tenants", headers=bearer(token))
    assert resp.status == 401 and (await resp.json())["code"] == "unauthorized"


async def test_without_a_configured_digest_there_is_no_operator_over_http(pg_settings: Settings) -> None:
    async with TestClient(TestServer(create_app(pg_settings))) as api:
        resp = await api.get("/v1/admin/tenants", headers=bearer(OPERATOR_TOKEN))
        assert resp.status == 401


async def test_usage_is_the_tenants_own_for_readers_and_admins_and_any_for_the_operator(world: World) -> None:
    api = world.api
    assert (await api.get("/v1/usage")).status == 401
    for key in (world.a_reader, world.a_admin):  # usage is billing, not PHI: admin may read it
        mine = await api.get("/v1/usage", params={"tenant_id": str(world.b)}, headers=bearer(key))
        assert mine.status == 200 and (await mine.json())["tenant_id"] == str(world.a)  # tenant_id is ignored
    writer = await api.get("/v1/usage", headers=bearer(world.a_writer))
    assert writer.status == 403 and (await writer.json())["code"] == "insufficient_scope"


def test_the_route_tables_documented_scopes_are_the_access_proven_here() -> None:
    """The OpenAPI document says who may call each route (``scopes`` in gateway/routes.py): what ACCESS proves."""
    from gateway.routes import OPERATOR, ROUTES  # here: the rest of this module reaches routes through the app

    as_scopes = {OPERATOR_ONLY: {OPERATOR}, TENANT_ADMIN: {OPERATOR, ADMIN}, USAGE: {READ, ADMIN, OPERATOR}}
    v1 = [route for route in ROUTES if route.path.startswith("/v1/")]
    assert {route.name for route in v1} == ACCESS.keys()
    for route in v1:
        access = ACCESS[route.name]
        expected = set(access.allowed) if isinstance(access, Scopes) else as_scopes[access]
        assert set(route.scopes) == expected, route.name
