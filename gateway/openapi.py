"""OpenAPI 3.1 document, generated from the same pydantic schemas the handlers use."""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson
from aiohttp import web
from pydantic.json_schema import models_json_schema

import medparse
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
from gateway.http import idempotency
from gateway.jobs.schemas import (
    INT32_MAX,
    HealthPublic,
    JobCreateJson,
    JobOptions,
    JobPublic,
    JobsPublic,
    ProblemPublic,
)
from gateway.webhooks.openapi import FORM_FIELDS, INPUT_MODELS, OUTPUT_MODELS, webhook_paths

REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json(name: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": _ref(name)}}}


PROBLEM = {"content": {"application/problem+json": {"schema": _ref("ProblemPublic")}}}
JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string", "maxLength": 255},
    "description": "same key + same request replays the first response; another request -> 422; in flight -> 409",
}
TENANT_ID = {"name": "tenant_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
PREFER = {
    "name": "Prefer", "in": "header", "required": False, "schema": {"type": "string", "example": "wait=10"},
    "description": "wait=N (N <= max_wait_seconds) holds the answer until the job is terminal or N seconds pass",
}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": "problem", **PROBLEM} for c in codes}


@cache
def build_document() -> dict[str, Any]:
    _, schemas = models_json_schema(
        [(m, "validation") for m in (JobCreateJson, JobOptions, TenantCreate, TenantQuotasPatch, KeyCreate)]
        + [(m, "serialization") for m in (
            JobPublic, JobsPublic, ProblemPublic, HealthPublic, TenantPublic, TenantsPublic, KeyPublic,
            KeyCreatedPublic, KeysPublic, UsagePublic,
        )]
        + [(m, "validation") for m in INPUT_MODELS] + [(m, "serialization") for m in OUTPUT_MODELS],
        ref_template=REF,
    )
    multipart = {
        "type": "object",
        "required": ["image", "prompts"],
        "properties": {
            "image": {"type": "string", "contentMediaType": "application/octet-stream"},
            "prompts": {"type": "string", "example": "liver & kidney"},
            "options": {"type": "string", "description": "JSON of JobOptions"},
            **FORM_FIELDS,
        },
    }
    auth_errors = _errors(401, 403)
    paths: dict[str, Any] = {
        "/v1/jobs": {
            "post": {
                "operationId": "createJob",
                "parameters": [PREFER, IDEMPOTENCY_KEY],
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {"schema": multipart},
                        "application/json": {"schema": _ref("JobCreateJson")},
                    },
                },
                "responses": {"202": {"description": "accepted", **_json("JobPublic")},
                              **_errors(400, 413, 415, 422), **auth_errors},
            },
            "get": {
                "operationId": "listJobs",
                "parameters": [
                    {"name": "status", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {"200": {"description": "jobs, newest first", **_json("JobsPublic")},
                              **_errors(400), **auth_errors},
            },
        },
        "/v1/jobs/{job_id}": {
            "get": {
                "operationId": "getJob", "parameters": [JOB_ID, PREFER],
                "responses": {"200": {"description": "the job", **_json("JobPublic")}, **_errors(404), **auth_errors},
            },
            "delete": {
                "operationId": "deleteJob", "parameters": [JOB_ID],
                "responses": {"204": {"description": "the job and all its data are gone"}, **_errors(404),
                              **auth_errors},
            },
        },
        "/v1/jobs/{job_id}/cancel": {"post": {
            "operationId": "cancelJob", "parameters": [JOB_ID],
            "responses": {"200": {"description": "canceled", **_json("JobPublic")}, **_errors(404, 409), **auth_errors},
        }},
        "/v1/jobs/{job_id}/masks/{index}": {"get": {
            "operationId": "getMaskPng",
            "parameters": [JOB_ID, {"name": "index", "in": "path", "required": True, "schema": {"type": "integer"}}],
            "responses": {"200": {"description": "0/255 PNG at the original size",
                                  "content": {"image/png": {}}}, **_errors(404, 409), **auth_errors},
        }},
        "/v1/jobs/{job_id}/masks.npz": {"get": {
            "operationId": "getMasksNpz", "parameters": [JOB_ID],
            "responses": {"200": {"description": "uint8 array 'masks' (N, H, W) with 0/1 values",
                                  "content": {"application/octet-stream": {}}}, **_errors(404, 409), **auth_errors},
        }},
        "/v1/jobs/{job_id}/result": {"get": {
            "operationId": "getResult",
            "description": "every output format of a succeeded job (gateway/results/handlers.py); provenance in the "
                           "body where the format allows and in the Medparse-Provenance header",
            "parameters": [
                JOB_ID,
                {"name": "format", "in": "query", "required": True,
                 "schema": {"type": "string", "enum": ["png", "npz", "rle", "overlay", "nifti", "dicom-seg"]}},
                {"name": "mask", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": INT32_MAX},
                 "description": "one prompt's mask (default all; png: 0)"},
                {"name": "slice", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": INT32_MAX},
                 "description": "volume slice for png/overlay (default: the one with the most mask voxels); "
                                "400 on a 2-D result or another format"},
            ],
            "responses": {"200": {"description": "the result in the requested format", "content": {
                "image/png": {}, "application/octet-stream": {}, "application/json": {}, "application/gzip": {},
                "application/dicom": {}}}, **_errors(400, 404, 409, 410), **auth_errors},
        }},
        "/v1/usage": {"get": {
            "operationId": "getUsage",
            "description": "The caller's tenant (a key with jobs:read or admin); the operator names one with "
                           "tenant_id. Instants between 1970-01-01 and 9000-01-01.",
            "parameters": [
                *({"name": n, "in": "query", "schema": {"type": "string", "format": "date-time"}}
                  for n in ("from", "to")),
                {"name": "tenant_id", "in": "query", "schema": {"type": "string", "format": "uuid"},
                 "description": "operator credential only: whose usage"},
            ],
            "responses": {"200": {"description": "usage of the caller's tenant", **_json("UsagePublic")},
                          **_errors(400), **auth_errors},
        }},
        "/v1/operator/audit": {"get": {
            "operationId": "operatorAudit",
            "description": "One tenant's audit entries, newest first (operator credential only).",
            "parameters": [
                {"name": "tenant_id", "in": "query", "required": True, "schema": {"type": "string", "format": "uuid"}},
                {"name": "job_id", "in": "query", "schema": {"type": "string", "format": "uuid"}},
                {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                {"name": "action", "in": "query", "schema": {"type": "string"}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
            ],
            "responses": {"200": {"description": "audit entries: {\"data\": [...]}",
                                  "content": {"application/json": {"schema": {"type": "object"}}}},
                          **_errors(400), **auth_errors},
        }},
        "/v1/admin/tenants": {
            "get": {"operationId": "adminListTenants", "description": OPERATOR_ONLY,
                    "responses": {"200": {"description": "tenants", **_json("TenantsPublic")}, **auth_errors}},
            "post": {"operationId": "adminCreateTenant", "description": OPERATOR_ONLY,
                     "requestBody": {"required": True, **_json("TenantCreate")},
                     "responses": {"201": {"description": "created", **_json("TenantPublic")},
                                   **_errors(409, 422), **auth_errors}},
        },
        "/v1/admin/tenants/{tenant_id}": {"patch": {
            "operationId": "adminUpdateTenant", "description": OPERATOR_ONLY, "parameters": [TENANT_ID],
            "requestBody": {"required": True, **_json("TenantQuotasPatch")},
            "responses": {"200": {"description": "updated", **_json("TenantPublic")},
                          **_errors(404, 422), **auth_errors},
        }},
        "/v1/admin/tenants/{tenant_id}/keys": {
            "get": {"operationId": "adminListKeys", "description": TENANT_ADMIN, "parameters": [TENANT_ID],
                    "responses": {"200": {"description": "keys (no secrets)", **_json("KeysPublic")},
                                  **_errors(404), **auth_errors}},
            "post": {"operationId": "adminCreateKey", "parameters": [TENANT_ID],
                     "description": TENANT_ADMIN + " A tenant's admin key grants only scopes it holds (403 "
                                    "scope_not_held otherwise).",
                     "requestBody": {"required": True, **_json("KeyCreate")},
                     "responses": {"201": {"description": "the key, shown once", **_json("KeyCreatedPublic")},
                                   **_errors(404, 422), **auth_errors}},
        },
        "/v1/admin/keys/{key_id}/revoke": {"post": {
            "operationId": "adminRevokeKey", "description": TENANT_ADMIN,
            "parameters": [{"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "revoked (immediately)", **_json("KeyPublic")},
                          **_errors(404), **auth_errors},
        }},
        "/healthz": {"get": {"operationId": "healthz", "security": [],
                             "responses": {"200": {"description": "alive", **_json("HealthPublic")}}}},
        "/readyz": {"get": {"operationId": "readyz", "security": [],
                            "responses": {"200": {"description": "ready", **_json("HealthPublic")},
                                          "503": {"description": "not ready", **_json("HealthPublic")}}}},
    }
    paths.update(webhook_paths())  # gateway/webhooks/openapi.py
    _document_idempotency_keys(paths)
    return {
        "openapi": "3.1.0",
        "info": {"title": "medparse-gateway", "version": medparse.__version__},
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"apiKey": []}],
        "paths": paths,
    }


OPERATOR_ONLY = (
    "Operator only: the credential whose SHA-256 is MEDPARSE_OPERATOR_TOKEN_SHA256 (or the CLI). "
    "A tenant's key, admin or not, gets 403 operator_required."
)
TENANT_ADMIN = (
    "The operator, or an admin key of the tenant itself; another tenant's admin key gets the 404 of a "
    "tenant (or key) that does not exist."
)


def _camel(route_name: str) -> str:
    first, *rest = route_name.split("_")
    return first + "".join(word.title() for word in rest)


def _document_idempotency_keys(paths: dict[str, Any]) -> None:
    """Every POST takes an Idempotency-Key (gateway/http/idempotency.py) but those whose answer holds a secret."""
    refused = {_camel(name) for name in idempotency.NOT_REPLAYABLE_ROUTES}
    for path_item in paths.values():
        operation = path_item.get("post")
        if operation is None or operation["operationId"] in refused:
            continue
        parameters = operation.setdefault("parameters", [])
        if IDEMPOTENCY_KEY not in parameters:
            parameters.append(IDEMPOTENCY_KEY)


async def serve(request: web.Request) -> web.Response:
    return web.Response(body=orjson.dumps(build_document()), content_type="application/json")
