"""RFC 7807 problem details: the one error shape of the API, with a stable ``code``."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

PROBLEM_CONTENT_TYPE = "application/problem+json"


class ApiProblem(Exception):
    """An error the client can act on. ``fields`` names the offending request fields."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        title: str | None = None,
        fields: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title or code.replace("_", " ").capitalize()
        self.fields = fields
        self.headers = headers or {}


def problem_response(problem: ApiProblem, instance: str) -> web.Response:
    body: dict[str, Any] = {
        "type": f"https://medparse.dev/problems/{problem.code}",
        "title": problem.title,
        "status": problem.status,
        "code": problem.code,
        "detail": problem.detail,
        "instance": instance,
    }
    if problem.fields:
        body["fields"] = problem.fields
    return web.Response(
        status=problem.status,
        body=orjson.dumps(body),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=problem.headers,
    )


def field_error(field: str, message: str, code: str = "invalid_field", status: int = 422) -> ApiProblem:
    return ApiProblem(status, code, f"{field}: {message}", fields=[{"field": field, "message": message}])


def not_found(what: str = "job") -> ApiProblem:
    # Another tenant's job answers exactly like a job that does not exist.
    return ApiProblem(404, f"{what}_not_found", f"no such {what}")
