"""Who a use case acts for: a tenant's API key or the deployment's operator (gateway/http/auth.py
tells which from the request; the use cases only read these records)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from gateway.tenancy import TenantQuotas


@dataclass(frozen=True)
class Principal:
    """A tenant's API key."""

    tenant_id: uuid.UUID
    key_id: str
    scopes: frozenset[str]
    quotas: TenantQuotas
    #: when this key stops working (None: never); keys it mints expire no later
    expires_at: datetime | None = None


@dataclass(frozen=True)
class Operator:
    """The deployment's operator: a credential configured on the server, not any tenant's key."""

    #: ``operator#<n>``: which of the configured tokens (1-based), for logs and the audit trail;
    #: never the token itself
    credential: str
