"""The OpenAPI 3.1 document, generated from the route table (gateway/routes.py).

Paths come from each ``Route``'s metadata, components from the pydantic models those routes read and
write, so a route added to the table is documented by the same edit. The vocabulary routes describe
themselves with (``Param``, ``Body``, ``Reply``) lives here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

import medparse
from gateway.http import idempotency
from gateway.jobs.schemas import JobOptions, ProblemPublic

if TYPE_CHECKING:
    from gateway.routes import Route

REF = "#/components/schemas/{model}"
SECURITY_SCHEME = "apiKey"


@dataclass(frozen=True)
class Param:
    """A query or header parameter (path parameters come from the path: ``PATH_PARAMS``)."""

    name: str
    location: Literal["query", "header"]
    schema: Mapping[str, Any]
    required: bool = False
    description: str | None = None


@dataclass(frozen=True)
class Body:
    """A JSON request body of ``model``; ``form``: the same request may also come as multipart/form-data."""

    model: type[BaseModel]
    form: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Reply:
    """A successful answer: JSON of ``model``, or the raw ``media`` types (with an optional ``schema``)."""

    status: int
    description: str
    model: type[BaseModel] | None = None
    media: tuple[str, ...] = ()
    schema: Mapping[str, Any] | None = None


def _uuid(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}


#: Every path parameter of the API, by the name routes give it in their path.
PATH_PARAMS: Mapping[str, dict[str, Any]] = {
    "job_id": _uuid("job_id"),
    "tenant_id": _uuid("tenant_id"),
    "webhook_id": _uuid("webhook_id"),
    "delivery_id": _uuid("delivery_id"),
    "index": {"name": "index", "in": "path", "required": True, "schema": {"type": "integer"}},
    "key_id": {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}},
}
_PLACEHOLDER = re.compile(r"\{(\w+)\}")

IDEMPOTENCY_KEY = Param(
    idempotency.HEADER, "header", {"type": "string", "maxLength": idempotency.MAX_KEY_CHARS},
    description="same key + same request replays the first response; another request -> 422; in flight -> 409",
)
PREFER = Param(
    "Prefer", "header", {"type": "string", "example": "wait=10"},
    description="wait=N (N <= max_wait_seconds) holds the answer until the job is terminal or N seconds pass",
)
LIMIT = Param("limit", "query", {"type": "integer", "minimum": 1})
CURSOR = Param("cursor", "query", {"type": "string"})


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _param(param: Param) -> dict[str, Any]:
    out: dict[str, Any] = {"name": param.name, "in": param.location}
    if param.required:
        out["required"] = True
    out["schema"] = dict(param.schema)
    if param.description is not None:
        out["description"] = param.description
    return out


def _reply(reply: Reply) -> dict[str, Any]:
    out: dict[str, Any] = {"description": reply.description}
    if reply.model is not None:
        out["content"] = {"application/json": {"schema": _ref(reply.model)}}
    elif reply.media:
        media: dict[str, Any] = {"schema": dict(reply.schema)} if reply.schema is not None else {}
        out["content"] = {media_type: media for media_type in reply.media}
    return out


def _problem() -> dict[str, Any]:
    return {"description": "problem", "content": {"application/problem+json": {"schema": _ref(ProblemPublic)}}}


def takes_idempotency_key(route: Route) -> bool:
    """Every POST takes an Idempotency-Key (gateway/http/idempotency.py) but those whose answer holds a secret."""
    return route.method == "POST" and idempotency.handling_of(route.handler) is not idempotency.KeyHandling.REFUSED


def operation(route: Route) -> dict[str, Any]:
    """One route's OpenAPI operation object."""
    parameters = [PATH_PARAMS[name] for name in _PLACEHOLDER.findall(route.path)]
    parameters += [_param(p) for p in route.params]
    if takes_idempotency_key(route) and IDEMPOTENCY_KEY not in route.params:
        parameters.append(_param(IDEMPOTENCY_KEY))
    op: dict[str, Any] = {"operationId": route.operation_id, "summary": route.summary, "tags": [route.tag]}
    if route.description is not None:
        op["description"] = route.description
    if parameters:
        op["parameters"] = parameters
    if route.body is not None:
        content: dict[str, Any] = {}
        if route.body.form is not None:
            content["multipart/form-data"] = {"schema": dict(route.body.form)}
        content["application/json"] = {"schema": _ref(route.body.model)}
        op["requestBody"] = {"required": True, "content": content}
    responses = {str(r.status): _reply(r) for r in route.replies}
    # A credential is needed under /v1 only (gateway/http/middleware.py): 401 without one, 403 without the scope.
    errors = (*route.errors, 401, 403) if route.scopes else route.errors
    responses.update({str(status): _problem() for status in errors})
    op["responses"] = responses
    # OpenAPI 3.1 lets a bearer scheme list role names; one requirement per role: any one of them will do.
    op["security"] = [{SECURITY_SCHEME: [scope]} for scope in route.scopes]
    return op


def _models(routes: Iterable[Route]) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    # JobOptions is the JSON of the multipart ``options`` field: named by a description, not a $ref.
    found: dict[type[BaseModel], JsonSchemaMode] = {JobOptions: "validation", ProblemPublic: "serialization"}
    for route in routes:
        if route.body is not None:
            found.setdefault(route.body.model, "validation")
        for reply in route.replies:
            if reply.model is not None:
                found.setdefault(reply.model, "serialization")
    return list(found.items())


def build_document(routes: Sequence[Route]) -> dict[str, Any]:
    documented = [r for r in routes if r.documented]
    _, schemas = models_json_schema(_models(documented), ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for route in documented:
        paths.setdefault(route.path, {})[route.method.lower()] = operation(route)
    return {
        "openapi": "3.1.0",
        "info": {"title": "medparse-gateway", "version": medparse.__version__},
        "tags": [{"name": tag} for tag in dict.fromkeys(r.tag for r in documented)],
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {SECURITY_SCHEME: {"type": "http", "scheme": "bearer"}},
        },
        "security": [{SECURITY_SCHEME: []}],
        "paths": paths,
    }


@cache
def served_document() -> bytes:
    from gateway.routes import ROUTES  # imported here: the route table routes to ``serve``

    return orjson.dumps(build_document(ROUTES))


async def serve(request: web.Request) -> web.Response:
    return web.Response(body=served_document(), content_type="application/json")
