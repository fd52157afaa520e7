"""Turning a ``POST /v1/jobs`` body (multipart or JSON) into a validated submission.

Every limit is a named setting; every rejection names the field and says why.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Awaitable
from typing import TypeVar

import pybase64
from aiohttp import BodyPartReader, web
from aiohttp.hdrs import CONTENT_DISPOSITION
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import ValidationError

from gateway.http.problems import ApiProblem, field_error, validation_problem
from gateway.jobs.schemas import JobCreateJson, JobOptions, control_characters, url_text_problem
from gateway.jobs.submission_model import JobSubmission
from gateway.webhooks.submission import JobWebhookRequest, WebhookFormFields, check_job_webhook
from medparse.settings import Settings

T = TypeVar("T")

#: A job form has a handful of fields; anything far beyond that is abuse of the multipart parser.
MAX_MULTIPART_PARTS = 12


#: Priority of a job within its tenant's queue (higher first); it never overtakes other tenants.
MIN_PRIORITY, MAX_PRIORITY = -100, 100


def parse_priority(raw: str | int | None) -> int:
    if raw is None or raw == "":
        return 0
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise field_error("priority", "must be an integer") from None
    if not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise field_error("priority", f"must be between {MIN_PRIORITY} and {MAX_PRIORITY}")
    return value


def parse_prompts(value: str | list[str], settings: Settings) -> list[str]:
    """``"liver & kidney"`` or ``["liver", "kidney"]`` -> ``["liver", "kidney"]``.

    The model splits its text column on ``&``, so a prompt in list form may not contain one.
    """
    if isinstance(value, str):
        prompts = [p.strip() for p in value.split("&")]
    else:
        for p in value:
            if "&" in p:
                raise field_error("prompts", "a prompt in list form must not contain '&'")
        prompts = [p.strip() for p in value]
    if not prompts or any(not p for p in prompts):
        raise field_error("prompts", "every prompt must be non-empty (separate prompts with '&')")
    if len(prompts) > settings.max_prompts:
        raise field_error("prompts", f"at most {settings.max_prompts} prompts per job")
    if any(len(p) > settings.max_prompt_chars for p in prompts):
        raise field_error("prompts", f"each prompt must be at most {settings.max_prompt_chars} characters")
    for p in prompts:
        if bad := control_characters(p):
            # NUL cannot be stored, and the model's text column is no place for the others either.
            raise field_error("prompts", f"a prompt must not contain control characters (found {bad[0]!r})")
    return prompts


def parse_options(raw: str | bytes | None, settings: Settings) -> JobOptions:
    if raw is None or raw == "" or raw == b"":
        return JobOptions()
    if len(raw) > settings.max_options_chars:
        raise field_error("options", f"at most {settings.max_options_chars} characters")
    try:
        return JobOptions.model_validate_json(raw)
    except ValidationError as exc:
        raise validation_problem(exc, prefix="options") from None


async def parse_json_submission(request: web.Request, settings: Settings) -> JobSubmission:
    body = await request.read()
    try:
        parsed = JobCreateJson.model_validate_json(body)
    except ValidationError as exc:
        raise validation_problem(exc) from None
    image = decode_base64_image(parsed.image_base64)
    return JobSubmission(
        image=image, prompts=parse_prompts(parsed.prompts, settings), options=parsed.options,
        priority=parse_priority(parsed.priority),
        webhook=await _job_webhook(request, parsed.webhook_url, parsed.webhook_events),
    )


def decode_base64_image(text: str) -> bytes:
    try:
        return pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:
        # Tolerate MIME-style line breaks (base64.encodebytes), as the model's own samples send.
        return pybase64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise field_error("image_base64", "not valid base64") from None


#: The usual Content-Disposition of a form field, nothing to unescape or decode. aiohttp's general
#: parser (BodyPartReader.name) costs ~50 us a part, a tenth of a submission's CPU (bench/accept.py);
#: a header this pattern matches parses to the same name there, anything else goes to aiohttp.
_PLAIN_FORM_FIELD = re.compile(r'form-data; ?name="([A-Za-z0-9_.\-]{1,64})"(?:; ?filename="[^"\\\r\n;]*")?')


def field_name(part: BodyPartReader) -> str | None:
    """The form field's name, as ``part.name`` gives it."""
    plain = _PLAIN_FORM_FIELD.fullmatch(part.headers.get(CONTENT_DISPOSITION, ""))
    return plain.group(1) if plain else part.name


async def _multipart_step(step: Awaitable[T]) -> T:
    """A step of aiohttp's multipart reader, which answers a body that breaks the framing (no
    starting boundary, another boundary, a body cut short) with a plain ValueError: a 400."""
    try:
        return await step
    except ValueError:  # its message quotes body bytes: not echoed
        raise ApiProblem(
            400, "malformed_multipart", "multipart body could not be read: its boundaries do not frame the parts"
        ) from None


async def _read_part(part: BodyPartReader, limit: int, field: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await _multipart_step(part.read_chunk(256 * 1024)):
        size += len(chunk)
        if size > limit:
            raise ApiProblem(413, "payload_too_large", f"{field}: larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_multipart_submission(request: web.Request, settings: Settings) -> JobSubmission:
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError) as exc:
        raise ApiProblem(400, "malformed_multipart", f"multipart body could not be read: {exc}") from None
    image: bytes | None = None
    prompts: str | None = None
    options: bytes | None = None
    priority: str | None = None
    webhook = WebhookFormFields()
    for _ in range(MAX_MULTIPART_PARTS):
        part = await _multipart_step(reader.next())
        if part is None:
            break
        if not isinstance(part, BodyPartReader):
            raise ApiProblem(400, "malformed_multipart", "nested multipart bodies are not accepted")
        name = field_name(part)
        if name == "image":
            image = await _read_part(part, settings.max_body_bytes, "image")
        elif name == "prompts":
            raw = await _read_part(part, settings.max_prompts * (settings.max_prompt_chars + 3), "prompts")
            prompts = raw.decode("utf-8", errors="strict")
        elif name == "options":
            options = await _read_part(part, settings.max_options_chars, "options")
        elif name == "priority":
            priority = (await _read_part(part, 16, "priority")).decode("ascii", errors="replace")
        elif name is not None and webhook.accepts(name):
            await _multipart_step(webhook.read(part, name))
        else:
            raise field_error(
                str(name),
                "unknown form field (expected image, prompts, options, priority, webhook_url, webhook_events)",
                status=400,
            )
    else:
        raise ApiProblem(400, "malformed_multipart", f"more than {MAX_MULTIPART_PARTS} form fields")
    if image is None or not image:
        raise field_error("image", "required: the image file", code="missing_field")
    if prompts is None:
        raise field_error("prompts", "required: '&'-separated prompts", code="missing_field")
    return JobSubmission(
        image=image, prompts=parse_prompts(prompts, settings), options=parse_options(options, settings),
        priority=parse_priority(priority), webhook=await _job_webhook(request, webhook.url, webhook.events or None),
    )


async def _job_webhook(request: web.Request, url: str | None, events: list[str] | None) -> JobWebhookRequest | None:
    if url and (problem := url_text_problem(url.strip())):
        raise field_error("webhook_url", problem)
    return await check_job_webhook(request, url, events)


async def parse_submission(request: web.Request, settings: Settings) -> JobSubmission:
    content_type = request.content_type
    try:
        if content_type == "application/json":
            return await parse_json_submission(request, settings)
        if content_type == "multipart/form-data":
            return await parse_multipart_submission(request, settings)
    except UnicodeDecodeError:
        raise field_error("prompts", "must be UTF-8 text", status=400) from None
    except HttpProcessingError as exc:  # e.g. a form part with an invalid header
        raise ApiProblem(400, "malformed_multipart", f"a form part could not be read: {exc.message}") from None
    raise ApiProblem(
        415,
        "unsupported_media_type",
        "send multipart/form-data (image, prompts, options) or application/json",
    )
