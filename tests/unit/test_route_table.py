"""The OpenAPI document and the router are the same API: every route the app serves is documented and
every documented operation is served, as computed from a real ``create_app`` (not from the table)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from db.delivery_status import DeliveryStatus
from gateway.app import create_app
from gateway.openapi import build_document, served_document
from gateway.routes import ROUTES
from medparse.settings import Settings

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@pytest.fixture
def app(tmp_path: Path) -> web.Application:
    # The router is built by create_app; the database and the queue are only reached at start-up.
    return create_app(Settings(data_dir=tmp_path / "var"))


@pytest.fixture
def document() -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(served_document())
    return doc


def _served(app: web.Application) -> dict[tuple[str, str], str | None]:
    """(method, path) -> route name, as the router serves them; the HEAD that aiohttp adds to a GET is left out."""
    served: dict[tuple[str, str], str | None] = {}
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        assert path is not None, f"a route without a path: {route}"
        served[(route.method, path)] = route.name
    return {(method, path): name for (method, path), name in served.items()
            if not (method == "HEAD" and ("GET", path) in served)}


def _documented(document: dict[str, Any]) -> dict[tuple[str, str], str]:
    """(method, path) -> operationId of every operation in the document."""
    return {
        (method.upper(), path): op["operationId"]
        for path, item in document["paths"].items() for method, op in item.items() if method in METHODS
    }


def test_every_served_route_is_documented_and_every_documented_operation_is_served(
    app: web.Application, document: dict[str, Any]
) -> None:
    served = _served(app)
    documented = _documented(document)
    undocumented = {(r.method, r.path) for r in ROUTES if not r.documented}
    assert set(served) - undocumented == set(documented), {
        "served, not documented": sorted(set(served) - undocumented - set(documented)),
        "documented, not served": sorted(set(documented) - set(served)),
    }


def test_each_operation_is_its_route_under_the_same_name(app: web.Application, document: dict[str, Any]) -> None:
    served = _served(app)
    for (method, path), operation_id in _documented(document).items():
        name = served[(method, path)]
        assert name is not None
        first, *rest = name.split("_")
        assert operation_id == first + "".join(w.title() for w in rest), (method, path)
    names = [name for name in served.values()]
    assert len(names) == len(set(names)), "route names are unique: the audit log and idempotency key on them"


def test_path_parameters_are_the_paths_placeholders(document: dict[str, Any]) -> None:
    for path, item in document["paths"].items():
        placeholders = re.findall(r"\{(\w+)\}", path)
        for method, op in item.items():
            in_path = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
            assert in_path == placeholders, (method, path)
            assert all(p["required"] for p in op.get("parameters", []) if p["in"] == "path")


def test_a_credential_is_documented_exactly_under_v1(document: dict[str, Any]) -> None:
    for path, item in document["paths"].items():
        for method, op in item.items():
            under_v1 = path.startswith("/v1/")
            assert bool(op["security"]) == under_v1, (method, path)
            assert ({"401", "403"} <= set(op["responses"])) == under_v1, (method, path)


def test_the_delivery_status_filter_lists_the_state_machine(document: dict[str, Any]) -> None:
    statuses = [s.value for s in DeliveryStatus]
    filters = [
        p["schema"]["enum"] for item in document["paths"].values() for op in item.values()
        for p in op.get("parameters", []) if p["name"] == "status" and "enum" in p["schema"]
    ]
    assert len(filters) == 3 and all(f == statuses for f in filters)


def test_the_served_document_is_the_route_tables(document: dict[str, Any]) -> None:
    assert document == orjson.loads(orjson.dumps(build_document(ROUTES)))
    refs = re.findall(rb'"\$ref":"#/components/schemas/(\w+)"', served_document())
    assert set(map(bytes.decode, refs)) <= set(document["components"]["schemas"])
