"""Schemas of the admin API (``admin`` scope) and of ``/v1/usage``."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Scope = Literal["jobs:read", "jobs:write", "admin"]
#: The quota columns are 32-bit integers; larger values are a 422, not a database error.
INT32_MAX = 2**31 - 1


class TenantQuotasPatch(BaseModel):
    """Quota overrides; ``null`` puts a quota back to the deployment default."""

    model_config = ConfigDict(extra="forbid")
    rate_limit_rps: Annotated[float, Field(ge=0.01, le=1e6)] | None = None
    max_queued_jobs: Annotated[int, Field(ge=0, le=INT32_MAX)] | None = None
    max_running_jobs: Annotated[int, Field(ge=1, le=INT32_MAX)] | None = None
    max_image_bytes: Annotated[int, Field(ge=1, le=INT32_MAX)] | None = None


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


class TenantsPublic(BaseModel):
    data: list[TenantPublic]


def _default_scopes() -> list[Scope]:
    return ["jobs:read", "jobs:write"]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scopes: Annotated[list[Scope], Field(min_length=1)] = Field(default_factory=_default_scopes)
    label: Annotated[str, Field(max_length=100)] | None = None
    expires_at: datetime | None = None


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
