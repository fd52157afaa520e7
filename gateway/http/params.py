"""What every handler reads from a request and how it answers: path ids, bounded query values, JSON
bodies parsed with pydantic, JSON responses. 400/404/422 problems name the field."""

from __future__ import annotations

import math
import re
import uuid
from datetime import UTC, datetime
from typing import TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from gateway.http.problems import field_error, not_found, validation_problem
from gateway.keys import SETTINGS
from medparse.settings import Settings


def json_response(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(model.model_dump(mode="json")), status=status,
        content_type="application/json", headers=headers,
    )


def requested_wait(request: web.Request, settings: Settings) -> float | None:
    """Seconds from ``Prefer: wait=N`` (RFC 7240), capped by the max_wait_seconds setting."""
    for header in request.headers.getall("Prefer", []):
        for preference in header.split(","):
            name, _, value = preference.strip().partition("=")
            if name.strip().lower() == "wait":
                try:
                    seconds = float(value.strip().strip('"'))
                except ValueError:
                    raise field_error("Prefer", "wait must be a number of seconds", status=400) from None
                if not math.isfinite(seconds):  # nan would compare false to every bound below
                    raise field_error("Prefer", "wait must be a finite number of seconds", status=400)
                return max(0.0, min(seconds, settings.max_wait_seconds))
    return None


M = TypeVar("M", bound=BaseModel)


def path_uuid(request: web.Request, name: str, what: str) -> uuid.UUID:
    """The id in the path; one that is not a UUID names nothing: 404 ``<what>_not_found``."""
    try:
        return uuid.UUID(request.match_info[name])
    except ValueError:
        raise not_found(what) from None


def job_id_from(request: web.Request) -> uuid.UUID:
    return path_uuid(request, "job_id", "job")


def bounded_int(raw: str, name: str, low: int, high: int) -> int:
    """A query value as an integer in [low, high]; 400 naming it otherwise. ASCII digits only:
    ``int()`` alone also takes ``"1_000"``, ``" 7 "`` and other scripts' digits."""
    if not _INTEGER.fullmatch(raw):
        raise field_error(name, "must be an integer", status=400)
    # Compared as text first: int() of a 5000-digit string is a ValueError (and slow) in itself.
    value = int(raw) if len(raw) <= 20 else None
    if value is None or not low <= value <= high:
        raise field_error(name, f"must be between {low} and {high}", status=400)
    return value


_INTEGER = re.compile(r"-?[0-9]+")


def query_datetime(request: web.Request, name: str) -> datetime | None:
    """``?name=`` as an aware UTC datetime (a naive one is taken as UTC); None when absent, 400 when it is
    not ISO 8601 or has no UTC instant (year 1 at +14:00: an OverflowError, which asyncpg made a 500)."""
    raw = request.query.get(name)
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw)
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise field_error(name, "an ISO 8601 date or date-time", status=400) from None


def page_limit(request: web.Request) -> int:
    """``?limit=`` of a list route (rows per page), within the settings' bounds."""
    settings = request.app[SETTINGS]
    raw = request.query.get("limit")
    return settings.default_page_size if raw is None else bounded_int(raw, "limit", 1, settings.max_page_size)


async def parse_body(request: web.Request, model: type[M], *, empty: bytes = b"") -> M:
    """The JSON body as ``model`` (an empty body reads as ``empty``); 422 naming the fields otherwise."""
    try:
        return model.model_validate_json(await request.read() or empty)
    except ValidationError as exc:
        raise validation_problem(exc) from None
