"""Bearer checks for the scoring route (per the endpoint's auth mode) and the admin routes."""

from __future__ import annotations

import hmac

from aiohttp import web

from emulator.config import EmulatorConfig
from emulator.tokens import TokenIssuer


def bearer_value(request: web.Request) -> str | None:
    """The credential from ``Authorization: Bearer <value>``, or None when absent or another scheme."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        return None
    return value


def _is_key(value: str, keys: list[str]) -> bool:
    # Compare against every key without stopping early, so timing does not reveal which one matched.
    matches = [hmac.compare_digest(value.encode(), key.encode()) for key in keys]
    return any(matches)


def may_score(request: web.Request, config: EmulatorConfig, tokens: TokenIssuer) -> bool:
    """Whether the request carries a credential the endpoint's auth mode accepts."""
    value = bearer_value(request)
    if value is None:
        return False
    if config.auth_mode == "aad_token":
        return tokens.is_valid(value, config.audience)
    # key and aml_token modes both present a static bearer value here; aml_token rotation is the
    # client's business and is emulated by listing the currently valid tokens as keys.
    return _is_key(value, config.keys)


def may_administer(request: web.Request, config: EmulatorConfig, tokens: TokenIssuer) -> bool:
    """Admin routes take a configured key; in aad_token mode a valid emulator token also works."""
    value = bearer_value(request)
    if value is None:
        return False
    if _is_key(value, config.keys):
        return True
    return config.auth_mode == "aad_token" and tokens.is_valid(value, config.audience)
