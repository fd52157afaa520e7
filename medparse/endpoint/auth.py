"""Bearer credentials for the scoring endpoint, one provider per auth mode.

Every mode sends ``Authorization: Bearer <value>``. ``key`` and ``aml_token`` values are static:
an aml_token expires, and refreshing it through the ARM ``token`` action is NOT done here, so
rotate ``MEDPARSE_ENDPOINT_KEY`` and restart before it expires (or use aad_token). ``aad_token``
goes through azure-identity, caches the token and refreshes it ``refresh_margin_s`` before expiry.
All providers are safe to share between threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from azure.core.credentials import TokenCredential
from azure.core.exceptions import ClientAuthenticationError

from medparse.endpoint.errors import EndpointAuthFailed
from medparse.settings import EndpointAuthMode, Settings, secret_value

log = logging.getLogger(__name__)


class TokenProvider(Protocol):
    def bearer(self, *, force_refresh: bool = False) -> str:
        """The value after ``Bearer``; ``force_refresh`` after the endpoint answered 401/403."""
        ...


class StaticBearer:
    """``key`` mode (and ``aml_token`` mode with a token obtained elsewhere): nothing to refresh."""

    def __init__(self, value: str) -> None:
        if not value:
            raise ValueError("empty endpoint key or token")
        self._value = value

    def bearer(self, *, force_refresh: bool = False) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<redacted>)"


class AadTokenProvider:
    """Entra ID tokens from azure-identity, cached until ``refresh_margin_s`` before expiry.

    A forced refresh (after a 401) must yield a new token, but azure-identity serves its own cache;
    so the credential is rebuilt from ``credential_factory``. Forced refreshes that arrive within
    ``min_forced_interval_s`` of a fetch (several threads seeing the same 401) reuse that fetch.
    """

    def __init__(
        self,
        scope: str,
        *,
        credential_factory: Callable[[], TokenCredential] | None = None,
        refresh_margin_s: float = 300.0,
        min_forced_interval_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._scope = scope
        self._factory = credential_factory or _default_credential
        self._margin = refresh_margin_s
        self._min_forced = min_forced_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._credential: TokenCredential | None = None
        self._token: str | None = None
        self._refresh_at = 0.0
        self._fetched_at = float("-inf")
        #: token requests made to the credential (not HTTP fetches: azure-identity may still cache)
        self.fetches = 0

    def bearer(self, *, force_refresh: bool = False) -> str:
        with self._lock:
            now = self._clock()
            if force_refresh and now - self._fetched_at >= self._min_forced:
                self._close_credential()
            elif self._token is not None and now < self._refresh_at:
                return self._token
            return self._fetch(now)

    def close(self) -> None:
        with self._lock:
            self._close_credential()

    def _fetch(self, now: float) -> str:
        if self._credential is None:
            self._credential = self._factory()
        try:
            token = self._credential.get_token(self._scope)
        except ClientAuthenticationError as exc:
            raise EndpointAuthFailed(
                f"could not get an Entra ID token for {self._scope} ({exc.message}); check the managed "
                "identity or AZURE_* environment of this process"
            ) from None
        self.fetches += 1
        self._token = token.token
        self._fetched_at = now
        self._refresh_at = token.expires_on - self._margin
        log.debug("endpoint token fetched, expires in %.0f s", token.expires_on - now)
        return token.token

    def _close_credential(self) -> None:
        close: Any = getattr(self._credential, "close", None)
        if callable(close):
            close()
        self._credential = None
        self._token = None


def _default_credential() -> TokenCredential:
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def make_token_provider(settings: Settings) -> TokenProvider:
    """The provider for ``settings.endpoint_auth_mode``."""
    if settings.endpoint_auth_mode is EndpointAuthMode.aad_token:
        return AadTokenProvider(
            settings.endpoint_aad_scope, refresh_margin_s=settings.endpoint_token_refresh_margin_s
        )
    value = secret_value(settings.endpoint_key)
    if not value:
        raise ValueError(f"MEDPARSE_ENDPOINT_KEY is required in {settings.endpoint_auth_mode} mode")
    return StaticBearer(value)
