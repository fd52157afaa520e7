"""Access tokens issued by the emulator's managed-identity route and checked in aad_token mode.

They are JWTs (HS256) with ``aud``, ``iat`` and ``exp`` claims, signed with a random per-app secret, so a
token is accepted only by the emulator that issued it, only for its audience and only until it expires.
``exp`` may be fractional (RFC 7519 NumericDate allows it) so tests can use sub-second lifetimes.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass

import orjson
import pybase64

ISSUER = "medparse-endpoint-emulator"
_HEADER = {"alg": "HS256", "typ": "JWT"}


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_on: float


def _b64url(data: bytes) -> str:
    return pybase64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return pybase64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenIssuer:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def issue(self, audience: str, ttl_s: float, now: float | None = None) -> IssuedToken:
        issued_at = time.time() if now is None else now
        expires_on = issued_at + ttl_s
        claims = {
            "aud": audience,
            "iss": ISSUER,
            "sub": "emulated-managed-identity",
            "iat": int(issued_at),
            "exp": expires_on,
            "jti": str(uuid.uuid4()),
        }
        signing_input = _b64url(orjson.dumps(_HEADER)) + "." + _b64url(orjson.dumps(claims))
        token = signing_input + "." + _b64url(self._sign(signing_input))
        return IssuedToken(access_token=token, expires_on=expires_on)

    def is_valid(self, token: str, audience: str, now: float | None = None) -> bool:
        """True if this issuer signed the token, for ``audience``, and it has not expired."""
        parts = token.split(".")
        if len(parts) != 3:
            return False
        signing_input = parts[0] + "." + parts[1]
        try:
            signature = _b64url_decode(parts[2])
            claims = orjson.loads(_b64url_decode(parts[1]))
        except (ValueError, orjson.JSONDecodeError):
            return False
        if not hmac.compare_digest(signature, self._sign(signing_input)) or not isinstance(claims, dict):
            return False
        expires = claims.get("exp")
        current = time.time() if now is None else now
        return same_audience(claims.get("aud"), audience) and isinstance(expires, int | float) and current < expires

    def _sign(self, signing_input: str) -> bytes:
        return hmac.new(self._secret, signing_input.encode("utf-8"), hashlib.sha256).digest()


def same_audience(claimed: object, expected: str) -> bool:
    # "https://ml.azure.com" and "https://ml.azure.com/" name the same resource.
    return isinstance(claimed, str) and claimed.rstrip("/") == expected.rstrip("/")
