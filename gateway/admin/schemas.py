"""Schemas of the admin API (the operator; a tenant's own ``admin`` keys) and of ``/v1/usage``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.jobs.schemas import PlainText

Scope = Literal["jobs:read", "jobs:write", "admin"]
#: The quota columns are 32-bit integers; larger values are a 422, not a database error.
INT32_MAX = 2**31 - 1


class TenantQuotasPatch(BaseModel):
    """Quota overrides; ``null`` puts a quota back to the deployment default."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    rate_limit_rps: Annotated[float, Field(ge=0.01, le=1e6)] | None = None
    max_queued_jobs: Annotated[int, Field(ge=0, le=INT32_MAX)] | None = None
    max_running_jobs: Annotated[int, Field(ge=1, le=INT32_MAX)] | None = None
    max_image_bytes: Annotated[int, Field(ge=1, le=INT32_MAX)] | None = None
    #: stored bytes (inputs + masks + medical outputs); 0 = no limit for this tenant
    max_stored_bytes: Annotated[int, Field(ge=0, le=2**62)] | None = None


class TenantCreate(TenantQuotasPatch):
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


class TenantPublic(BaseModel):
    id: uuid.UUID
    name: str
    created_at: datetime
    rate_limit_rps: float | None
    max_queued_jobs: int | None
    max_running_jobs: int | None
    max_image_bytes: int | None
    max_stored_bytes: int | None = None


class TenantsPublic(BaseModel):
    data: list[TenantPublic]


def _default_scopes() -> list[Scope]:
    return ["jobs:read", "jobs:write"]


#: Expiry instants a key may carry: a timestamptz round-trips them, and shifting one to UTC cannot
#: overflow (year 1 at +14:00 has no UTC instant; asyncpg raised OverflowError, a 500).
EARLIEST_EXPIRY = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_EXPIRY = datetime(9000, 1, 1, tzinfo=UTC)


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: a tenant's admin key may grant only scopes it holds itself; the operator, any
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=3)] = Field(default_factory=_default_scopes)
    label: Annotated[PlainText, Field(max_length=100)] | None = None
    expires_at: datetime | None = None

    @field_validator("expires_at")
    @classmethod
    def _expiry_in_range(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        try:
            value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        except OverflowError:
            raise ValueError("not a representable instant") from None
        if not EARLIEST_EXPIRY <= value <= LATEST_EXPIRY:
            raise ValueError(f"must be between {EARLIEST_EXPIRY.date()} and {LATEST_EXPIRY.date()}")
        return value


class KeyPublic(BaseModel):
    id: str
    tenant_id: uuid.UUID
    label: str | None
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class KeyCreatedPublic(KeyPublic):
    #: the whole key; shown once, only its hash is stored
    key: str


class KeysPublic(BaseModel):
    data: list[KeyPublic]


class UsagePublic(BaseModel):
    tenant_id: uuid.UUID
    #: jobs created in [from, to)
    start: datetime = Field(serialization_alias="from")
    end: datetime = Field(serialization_alias="to")
    jobs: dict[str, int]
    images: int
    prompts: int
    endpoint_calls: int
    endpoint_seconds: float
    #: bytes the tenant keeps stored now (inputs + masks + medical outputs), and its quota (null: none)
    stored_bytes: int = 0
    max_stored_bytes: int | None = None
