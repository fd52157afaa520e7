"""RFC 7807 problem details: the one error shape of the API, with a stable ``code``."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from gateway import errors

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


def _field_path(loc: tuple[int | str, ...]) -> str:
    """``("window", "CustomWindow", "center")`` -> ``window.center``: pydantic puts the member of a
    union it tried into the location (a class name, ``str-enum[...]``, ``list[...]``), which names no
    field of ours (they are all snake_case)."""
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and (p[:1].isupper() or "[" in p)))


def validation_problem(exc: ValidationError, prefix: str = "") -> ApiProblem:
    fields: list[dict[str, str]] = []
    for err in exc.errors(include_url=False):
        loc = _field_path(err["loc"])
        name = f"{prefix}.{loc}" if prefix and loc else (prefix or loc or "body")
        entry = {"field": name, "message": err["msg"]}
        if entry not in fields:
            fields.append(entry)
    detail = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    return ApiProblem(422, "invalid_request", detail, fields=fields)


#: The HTTP status of each kind of domain error; the most specific class in an error's MRO wins.
STATUS_OF: dict[type[errors.DomainError], int] = {
    errors.DomainError: 422,
    errors.BadQueryField: 400,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.Gone: 410,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedFormat: 415,
    errors.QuotaExceeded: 429,
    errors.Busy: 503,
}


def problem_of(error: errors.DomainError) -> ApiProblem:
    """The problem+json answer to a refused use case."""
    status = next(STATUS_OF[kind] for kind in type(error).__mro__ if kind in STATUS_OF)
    headers = {"Retry-After": error.retry_after} if error.retry_after is not None else None
    return ApiProblem(status, error.code, error.detail, fields=error.fields, headers=headers)
