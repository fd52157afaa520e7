"""Table definitions (SQLAlchemy 2 declarative). Alembic migrations are written from these."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from db.delivery_status import DeliveryStatus
from db.status import JobStatus
from db.types import UtcDateTime

NAMING_CONVENTION = {
    "ix": "ix__%(table_name)s__%(column_0_N_name)s",
    "uq": "uq__%(table_name)s__%(column_0_N_name)s",
    "ck": "ck__%(table_name)s__%(constraint_name)s",
    "fk": "fk__%(table_name)s__%(column_0_N_name)s__%(referred_table_name)s",
    "pk": "pk__%(table_name)s",
}

STATUS_VALUES = ", ".join(f"'{s.value}'" for s in JobStatus)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)



class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # Quota overrides; NULL means the deployment-wide default from Settings.
    rate_limit_rps: Mapped[float | None] = mapped_column(Float)
    max_queued_jobs: Mapped[int | None] = mapped_column(Integer)
    max_running_jobs: Mapped[int | None] = mapped_column(Integer)
    max_image_bytes: Mapped[int | None] = mapped_column(Integer)
    #: inputs + masks + medical outputs kept (migration 0007; counted in ``tenant_usage``)
    max_stored_bytes: Mapped[int | None] = mapped_column(BigInteger)


class TenantUsage(Base):
    """A tenant's stored bytes, kept by triggers in the transactions that store and delete them
    (migration 0007_system_role_quota_audit): the quota check reads one row, never a sum."""

    __tablename__ = "tenant_usage"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    stored_bytes: Mapped[int] = mapped_column(BigInteger, server_default="0")


class AuditLog(Base):
    """Who read, deleted or changed what (db/audit.py). Append-only for the application roles;
    no PHI: ids, an action name and a request id only."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix__audit_log__tenant_id_at", "tenant_id", "at"),
        Index("ix__audit_log__job_id", "job_id"),
        Index("ix__audit_log__at", "at"),
        # PostgreSQL only (migration 0008_audit_hardening), with a trigger that sets ``at`` to now()
        CheckConstraint("actor IN ('key', 'operator', 'cli')", name="actor_known"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), Identity(), primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    #: ``key`` (an API key), ``operator`` (the operator credential) or ``cli``
    actor: Mapped[str] = mapped_column(String(16))
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    key_id: Mapped[str | None] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    #: what else the action was on (``key:<id>``, ``webhook:<id>``, ``tenant:<id>``)
    target: Mapped[str | None] = mapped_column(String(200))
    request_id: Mapped[str | None] = mapped_column(String(64))


class ApiKey(Base):
    __tablename__ = "api_keys"

    #: the public part of ``mpk_<id>_<secret>``; safe to log
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    #: SHA-256 of the secret part. The secret has 192 random bits, so a slow hash adds nothing.
    secret_hash: Mapped[str] = mapped_column(String(64))
    label: Mapped[str | None] = mapped_column(String(100))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"status IN ({STATUS_VALUES})", name="status_known"),
        Index("ix__jobs__tenant_created", "tenant_id", "created_at", "id"),
        Index("ix__jobs__status_dispatched", "status", "dispatched_at"),
        Index("ix__jobs__tenant_status", "tenant_id", "status"),
        #: the retention purge's scan (migration 0005_retention_index)
        Index(
            "ix__jobs__completed", "completed_at",
            postgresql_where=text("completed_at IS NOT NULL"), sqlite_where=text("completed_at IS NOT NULL"),
        ),
        Index(
            "ix__jobs__undispatched", "tenant_id", text("priority DESC"), "created_at", "id",
            postgresql_where=text("status = 'queued' AND dispatched_at IS NULL"),
            sqlite_where=text("status = 'queued' AND dispatched_at IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))
    prompts: Mapped[list[str]] = mapped_column(JSON)
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    input_format: Mapped[str] = mapped_column(String(16))
    input_width: Mapped[int] = mapped_column(Integer)
    input_height: Mapped[int] = mapped_column(Integer)
    input_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    #: last time the job id was published to the broker; NULL = never (the sweeper publishes it)
    dispatched_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    #: claims so far; the claim that made attempt k is the only one allowed to finish attempt k
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: higher runs first within the tenant; never reorders other tenants' jobs
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    prompt_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: HTTP calls to the model endpoint and their seconds, summed over attempts (for usage/billing)
    endpoint_calls: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    endpoint_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    result_width: Mapped[int | None] = mapped_column(Integer)
    result_height: Mapped[int | None] = mapped_column(Integer)
    #: provenance of the result: endpoint request ids, preprocessing geometry, software version
    result_meta: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: what the submit-time probe learned about a DICOM/NIfTI upload (frames, volume shape, slice axis)
    input_meta: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: ``{"done", "total"}`` slices of a running volume job (migration 0004_medical)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class IdempotencyKey(Base):
    """The first response to a POST with an ``Idempotency-Key``, replayed to retries (per tenant)."""

    __tablename__ = "idempotency_keys"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    #: SHA-256 of what the request asked for; the same key with another fingerprint is refused
    fingerprint: Mapped[str] = mapped_column(String(64))
    #: ``in_flight`` until the first request finishes, then ``done``
    state: Mapped[str] = mapped_column(String(16))
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_headers: Mapped[dict[str, str] | None] = mapped_column(JSON)
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    #: an ``in_flight`` record older than this was abandoned (its request died) and may be taken over
    locked_until: Mapped[datetime] = mapped_column(UtcDateTime())
    #: the job the request created, so deleting the job deletes its idempotency record too
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))


class JobInput(Base):
    """The uploaded image bytes, kept apart from ``jobs`` so listing jobs never reads them."""

    __tablename__ = "job_inputs"

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class JobMask(Base):
    """One mask per prompt; the primary key makes a second result set for a job impossible."""

    __tablename__ = "job_masks"

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt: Mapped[str] = mapped_column(Text)
    label: Mapped[str] = mapped_column(String(64))
    area_px: Mapped[int] = mapped_column(Integer)
    bbox: Mapped[list[int] | None] = mapped_column(JSON)
    height: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    #: how ``data`` is encoded; see ``medparse.masks``
    encoding: Mapped[str] = mapped_column(String(32))
    data: Mapped[bytes] = mapped_column(LargeBinary)


class JobMedical(Base):
    """The medical side of a job (migration 0004_medical; statements in db/medical.py).

    ``source_header`` is what DICOM SEG / NIfTI outputs copy from the input (the DICOM dataset
    without pixel data, or the NIfTI header), so they work after the input is deleted. For a
    volume job ``data`` holds every prompt's mask volume (see ``medparse.medical.volumes``).
    """

    __tablename__ = "job_medical"

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    #: ``dicom`` or ``nifti``
    source_kind: Mapped[str] = mapped_column(String(16))
    source_header: Mapped[bytes | None] = mapped_column(LargeBinary)
    #: the label volume's shape (the input's spatial shape); NULL for a 2-D result
    volume_shape: Mapped[list[int] | None] = mapped_column(JSON)
    slice_axis: Mapped[int | None] = mapped_column(Integer)
    #: 4x4 voxel-to-world matrix of a NIfTI input
    affine: Mapped[list[list[float]] | None] = mapped_column(JSON)
    encoding: Mapped[str | None] = mapped_column(String(32))
    data: Mapped[bytes | None] = mapped_column(LargeBinary)


# --- Webhooks (migration 0002_webhooks; statements in db/webhooks.py) ---

DELIVERY_STATUS_VALUES = ", ".join(f"'{s.value}'" for s in DeliveryStatus)


class WebhookEndpoint(Base):
    """A tenant's registered receiver of all (or some) of its job events."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix__webhook_endpoints__tenant_created", "tenant_id", "created_at", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(String(200))
    #: NULL = every event type
    event_types: Mapped[list[str] | None] = mapped_column(JSON)
    #: ``whsec_...``; kept in clear because signing needs it (like an API's client secret)
    secret: Mapped[str] = mapped_column(String(64))
    #: the secret before the last rotation, still signing until ``previous_secret_expires_at``
    previous_secret: Mapped[str | None] = mapped_column(String(64))
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    #: set when the receiver answered 410 (or by the tenant); disabled endpoints get no new events
    disabled_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    disabled_reason: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class WebhookTenantSecret(Base):
    """The tenant's default signing secret, used for per-job ``webhook_url`` deliveries."""

    __tablename__ = "webhook_tenant_secrets"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    secret: Mapped[str] = mapped_column(String(64))
    previous_secret: Mapped[str | None] = mapped_column(String(64))
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class JobWebhook(Base):
    """The ``webhook_url`` and ``webhook_events`` given with one job."""

    __tablename__ = "job_webhooks"

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    event_types: Mapped[list[str]] = mapped_column(JSON)
    #: the receiver answered 410: no further events for this job
    disabled_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class WebhookDelivery(Base):
    """One job event for one target (the outbox row); its id is the stable ``webhook-id``.

    Written in the same transaction as the job's status change. The unique constraint makes a
    retried status change unable to create the event twice.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint(f"status IN ({DELIVERY_STATUS_VALUES})", name="status_known"),
        UniqueConstraint("job_id", "event_type", "target"),
        Index("ix__webhook_deliveries__status_next", "status", "next_attempt_at"),
        Index("ix__webhook_deliveries__tenant_created", "tenant_id", "created_at", "id"),
        Index("ix__webhook_deliveries__endpoint_created", "endpoint_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    #: NULL for the job's own ``webhook_url``
    endpoint_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    #: ``job`` or the endpoint id: not NULL, so the unique constraint also covers per-job URLs
    target: Mapped[str] = mapped_column(String(40))
    event_type: Mapped[str] = mapped_column(String(32))
    #: the body, fixed when the event happened so every retry sends the same bytes
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    #: attempts ever made (numbers the attempt rows); ``failures`` indexes the retry schedule
    attempts: Mapped[int] = mapped_column(Integer)
    failures: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    #: last publish of ``webhooks.deliver``; the dispatcher publishes again if it is old
    dispatched_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    #: lease of the task that is sending; an expired one (killed worker) is claimed again
    claimed_until: Mapped[datetime | None] = mapped_column(UtcDateTime())
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery (no bodies: they may hold PHI-adjacent data or secrets)."""

    __tablename__ = "webhook_attempts"

    delivery_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    duration_ms: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(String(200))
