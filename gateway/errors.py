"""Domain errors: what a use case refuses, in the use case's words, with no HTTP in sight.

Services raise these; ``problems_middleware`` (gateway/http/middleware.py) maps each kind to its HTTP
status through ``STATUS_OF`` (gateway/http/problems.py) and renders problem+json with the error's
``code``, ``detail`` and ``fields``. The CLI catches them and prints the detail. HTTP-only refusals
(a malformed query value, a body that is not JSON) stay ``ApiProblem`` in the handlers' parsing.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A refusal the caller can act on. ``code`` is the stable machine-readable name."""

    code: str = "invalid_request"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        fields: list[dict[str, Any]] | None = None,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.fields = fields
        #: seconds, as the Retry-After header writes them, when retrying later can succeed
        self.retry_after = retry_after


class NotFound(DomainError):
    """Nothing of that kind with that id in the caller's tenant (another tenant's answers the same)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"no such {what}", code=f"{what}_not_found")
        self.what = what


class JobNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("job")


class InvalidField(DomainError):
    """One named field of the request is unacceptable (422)."""

    def __init__(self, field: str, message: str, code: str = "invalid_field") -> None:
        super().__init__(f"{field}: {message}", code=code, fields=[{"field": field, "message": message}])
        self.field = field


class BadQueryField(InvalidField):
    """A named query or header value is unacceptable (400)."""


class Conflict(DomainError):
    """The resource's state does not allow it now (409)."""


class NotCancelable(Conflict):
    code = "not_cancelable"


class Forbidden(DomainError):
    """The caller may not do this (403)."""

    code = "forbidden"


class QuotaExceeded(DomainError):
    """A tenant quota or rate is used up (429); ``retry_after`` says when to try again."""


class PayloadTooLarge(DomainError):
    """An upload over a size limit (413)."""


class UnsupportedFormat(DomainError):
    """An upload in a format the service does not read (415)."""

    code = "unsupported_format"


class Unprocessable(DomainError):
    """A well-formed request the service cannot carry out (422), e.g. a corrupt image."""


class Busy(DomainError):
    """A shared resource is saturated (503); ``retry_after`` says when to try again."""


class Gone(DomainError):
    """What the request needs existed once and was deleted for good, e.g. by retention (410)."""


class MaskNotFound(NotFound):
    """No mask with that index (404 ``mask_not_found``); ``detail`` may say how many there are."""

    def __init__(self, detail: str = "no such mask") -> None:
        super().__init__("mask")
        self.detail = detail
        self.args = (detail,)


class WebhookTargetRefused(InvalidField):
    """A webhook URL the SSRF policy refuses (422 ``webhook_target_refused``; ``invalid_field`` when
    it is not a usable URL at all); ``reason`` is the policy's name for why."""

    def __init__(self, field: str, message: str, reason: str) -> None:
        super().__init__(field, message, code="invalid_field" if reason == "invalid_url" else "webhook_target_refused")
        self.fields = [{"field": field, "message": message, "reason": reason}]
        self.reason = reason


class TenantNotFound(NotFound):
    """No tenant with that id (404 ``tenant_not_found``), or, given ``name``, with that name."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__("tenant")
        if name is not None:
            self.detail = f"no tenant named {name!r}"
            self.args = (self.detail,)


class KeyNotActive(NotFound):
    """No key with that id that is not revoked yet (404 ``key_not_found``): the CLI's revoke."""

    def __init__(self, key_id: str) -> None:
        super().__init__("key")
        self.detail = f"no active key {key_id!r}"
        self.args = (self.detail,)


def decode_busy(retry_after_s: int | float, message: str) -> Busy:
    """No decode process was free in time (medparse/decode_pool.py ``DecodeBusy``): 503, retry later."""
    return Busy(
        f"image: the service is decoding other uploads ({message}); retry later",
        code="decode_busy", retry_after=str(retry_after_s),
    )
