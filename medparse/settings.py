"""All configuration, in one pydantic-settings object built once at start-up and passed in.

Every limit the service enforces is a named field here, with the reason beside it.
Nothing in this module reads the environment at import time: call ``Settings()`` once in an
entry point (CLI, Celery app factory, Alembic env) and hand the object down.
"""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class EndpointAuthMode(StrEnum):
    #: static endpoint key, sent as a bearer token
    key = "key"
    #: Azure ML token (from the endpoint's ``token`` action), sent as a bearer token
    aml_token = "aml_token"
    #: Entra ID token through azure-identity (DefaultAzureCredential)
    aad_token = "aad_token"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDPARSE_", extra="ignore", frozen=True)

    # --- process and storage -------------------------------------------------------------
    data_dir: Path = Path("var")
    host: str = "127.0.0.1"
    port: int = 8080
    #: Gateway processes sharing the port (SO_REUSEPORT). One process tops out at one core, so 0
    #: (default) means one per CPU core; the embedded mode always runs one (its event socket has a
    #: single listener).
    gateway_processes: int = Field(default=0, ge=0, le=64)
    #: ``postgresql+asyncpg://...`` in production; unset means the embedded SQLite file.
    database_url: str | None = None
    #: ``redis://...`` in production; unset means the embedded local queue.
    redis_url: str | None = None
    #: prefix of every Redis key we or Celery write, so several deployments (or tests) share a server.
    redis_namespace: str = "medparse"
    log_level: str = "INFO"

    # --- request limits ---------------------------------------------------------------------
    #: Largest request body; uploads above it get 413 before anything is decoded.
    max_body_bytes: int = 32 * 1024 * 1024
    #: Largest decoded image (width x height x frames). Pillow only warns at 89 M px; we refuse earlier
    #: because the worker holds several float copies of the image while preprocessing.
    max_image_pixels: int = 40_000_000
    #: Prompts per job: each prompt is one mask of 1024x1024 bytes on the wire and in memory.
    max_prompts: int = 16
    #: Characters per prompt; the model's prompts are short phrases.
    max_prompt_chars: int = 200
    #: Size of the optional ``options`` JSON object, in characters.
    max_options_chars: int = 4096
    #: Rows per page on list endpoints.
    max_page_size: int = 100
    default_page_size: int = 20
    #: Longest ``Prefer: wait=N`` we honour, in seconds.
    max_wait_seconds: float = 60.0

    # --- model endpoint (client side) --------------------------------------------------------
    endpoint_scoring_uri: str | None = None
    endpoint_auth_mode: EndpointAuthMode = EndpointAuthMode.key
    endpoint_key: SecretStr | None = None
    endpoint_deployment: str | None = None
    endpoint_aad_scope: str = "https://ml.azure.com/.default"
    #: Refresh a cached token this many seconds before it expires.
    endpoint_token_refresh_margin_s: float = 300.0
    endpoint_connect_timeout_s: float = 10.0
    #: Read timeout: the deployment's request_timeout_ms (90 s in the samples) plus a margin.
    endpoint_read_timeout_s: float = 95.0
    endpoint_max_attempts: int = 6
    #: Total time one endpoint call may take across all its retries.
    endpoint_max_total_s: float = 300.0
    endpoint_backoff_min_s: float = 0.5
    endpoint_backoff_max_s: float = 30.0
    #: 424 answers are retried only when the model's inner status is 5xx, and at most this often.
    endpoint_max_424_attempts: int = 2
    #: max_concurrent_requests_per_instance x instance_count of the deployment: our global in-flight cap.
    endpoint_max_concurrent_per_instance: int = 8
    endpoint_instance_count: int = 1
    #: Requests kept open beyond max_concurrent x instances, as a fraction of it (rounded up), so the
    #: deployment has the next request queued when one finishes; otherwise every slot idles for our
    #: round trip (response transfer, release, wake-up, next upload). Azure ML answers 429 only above
    #: 2 x max_concurrent x instances pending, and the cap always stays below that.
    endpoint_in_flight_headroom: float = Field(default=0.25, ge=0.0, le=1.0)
    #: How long a crashed worker's in-flight slot stays taken; live holders renew theirs.
    endpoint_in_flight_lease_s: float = 30.0
    #: Rows (images of different jobs) per endpoint request. The docs advise few rows for 1024²
    #: images (bandwidth 5 MB/s per endpoint), so 1 by default.
    endpoint_max_rows_per_request: int = 1
    #: How long a row waits for batch-mates when rows per request > 1.
    endpoint_batch_wait_s: float = 0.01
    #: Side of the square PNG the model accepts.
    endpoint_image_size: int = 1024
    #: zlib level of the PNG we send: level 1 costs a third of Pillow's default 6 for ~15 % more bytes.
    endpoint_png_compress_level: int = 1

    # --- medical inputs: DICOM, NIfTI volumes, the 3-D model (medparse/medical, workers/volume_pipeline.py) ---
    #: Voxels of the volume a job segments (one frame of a 4-D NIfTI), checked from the header before
    #: anything is allocated; the worker holds the volume as floats plus one byte per voxel and prompt.
    max_volume_voxels: int = 50_000_000
    #: Size of the uncompressed NIfTI file (all frames); a .nii.gz is never inflated beyond it.
    max_volume_bytes: int = 512 * 1024 * 1024
    #: Slices (or DICOM frames) one volume job may segment with the 2-D model: each is a model call row,
    #: and all of them must fit the task time limit (256 / 4 per request = 64 calls of a few seconds).
    max_volume_slices: int = 256
    #: Slices per endpoint request in a volume job (input_data.data rows); the docs advise few rows
    #: ("in the dozens" at most) because every row carries a 1024x1024 PNG and N 1024x1024 masks.
    volume_rows_per_request: int = 4
    #: Masks (rows x prompts) per volume request at most: bounds the response (~1.4 MB of base64 each).
    volume_max_masks_per_request: int = 32
    #: The MedImageParse 3-D endpoint; unset URI/key mean the 2-D endpoint's (then the deployment
    #: header picks the 3-D deployment). The 3-D model scores a whole volume in one call, so it gets
    #: the samples' 180 s request timeout plus a margin.
    endpoint_3d_scoring_uri: str | None = None
    endpoint_3d_key: SecretStr | None = None
    endpoint_3d_deployment: str | None = "medimageparse-3d"
    endpoint_3d_read_timeout_s: float = 185.0

    # --- workers and the job lifecycle ------------------------------------------------------
    worker_concurrency: int = 8
    #: Attempts per job before it ends ``failed`` with ``attempts_exhausted``.
    job_max_attempts: int = 3
    #: A running job whose lease passed without a heartbeat is taken back by the sweeper.
    job_lease_s: float = 120.0
    job_heartbeat_s: float = 15.0
    task_soft_time_limit_s: float = 540.0
    task_time_limit_s: float = 600.0
    #: Redis redelivers unacked messages after this; it must exceed the task hard time limit.
    broker_visibility_timeout_s: float = 3600.0
    sweep_interval_s: float = 5.0
    #: A queued job not claimed this long after it was dispatched goes back to the dispatcher.
    redispatch_after_s: float = 60.0
    #: Jobs published to the broker but not yet claimed, at most. Jobs wait in Postgres, not in the
    #: broker, so a tenant's new job overtakes another tenant's backlog at the next dispatch round.
    dispatch_window: int = 16
    #: A dispatch round also runs this often without any nudge (a lost nudge only delays).
    dispatch_interval_s: float = 0.5

    # --- retention -----------------------------------------------------------------------------
    #: Delete a job's uploaded image as soon as the job succeeded (its masks stay). Off by default
    #: because overlays and DICOM SEG outputs are rendered from the input on demand.
    retention_delete_input_on_success: bool = False
    #: Finished jobs (and everything of theirs) are purged this many days after they ended.
    retention_days: float = 30.0

    #: Database connections each gateway process keeps open (no overflow: a connection opened and
    #: closed per burst costs more than waiting a moment for a pooled one).
    gateway_db_pool_size: int = Field(default=20, ge=1)

    #: A worker's pooled database connection idle this long is checked (one round trip) before use;
    #: one used more recently is trusted (db/engine.py).
    db_ping_after_idle_s: float = Field(default=1.0, ge=0.0)

    # --- submissions: group commit (gateway/jobs/writer.py) ------------------------------------
    #: Submissions that arrive while a transaction is in flight share the next one, up to this many
    #: jobs and this many image bytes; a lone submission is written at once, alone.
    submit_batch_max_jobs: int = Field(default=64, ge=1)
    submit_batch_max_bytes: int = Field(default=16 * 1024 * 1024, ge=1)
    #: Job-writing transactions in flight at once per gateway process.
    submit_batch_concurrency: int = Field(default=1, ge=1)

    #: A verified API key (with its tenant's quotas) is trusted this long without a database
    #: lookup; also the longest a revocation or quota change takes to bite. 0 (default) disables
    #: the cache: revocation is immediate (tests/integration/test_tenancy_api.py).
    auth_cache_ttl_s: float = 0.0

    # --- tenants: defaults that a tenant's own row may override ---------------------------------
    #: Token bucket per tenant: sustained requests per second and the burst it may save up.
    tenant_rate_limit_rps: float = 100.0
    tenant_rate_limit_burst: float = 200.0
    #: Jobs a tenant may have waiting; more submissions get 429 until some start.
    tenant_max_queued_jobs: int = 10_000
    #: Jobs of one tenant dispatched or running at once, so one tenant cannot take every worker. It
    #: must exceed the in-flight cap x (job wall time / model latency), ~2-3x, or a lone tenant's
    #: backlog cannot keep the endpoint busy.
    tenant_max_running_jobs: int = 32
    #: Largest image a tenant may upload (unset: max_body_bytes).
    tenant_max_image_bytes: int | None = None
    #: How long an ``Idempotency-Key`` and its first response are kept.
    idempotency_ttl_s: float = 24 * 3600.0
    #: A first request still "in flight" after this is taken to have died; a retry may take over.
    idempotency_in_flight_s: float = 60.0

    # --- webhooks (medparse/webhooks, workers/webhook_tasks.py) ---------------------------------
    #: Connect, write and read timeout of one delivery attempt (Standard Webhooks: 15-30 s).
    webhook_timeout_s: float = 15.0
    #: Delays before each retry after a failed attempt (the first attempt is immediate); jittered
    #: by +/- webhook_retry_jitter. The default is Svix's published schedule (last try after ~27.6 h).
    webhook_retry_schedule_s: tuple[float, ...] = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
    webhook_retry_jitter: float = 0.2
    #: Loopback and private targets are refused (SSRF); true only for local development and tests.
    webhook_allow_private_targets: bool = False
    #: After a secret rotation the old secret keeps signing (a second signature) this long.
    webhook_secret_overlap_s: float = 24 * 3600.0
    #: How often each worker publishes due deliveries to the broker (retries wait in Postgres).
    webhook_dispatch_interval_s: float = 1.0
    #: Registered endpoints per tenant; each event fans out to all of them.
    webhook_max_endpoints: int = 20
    #: An endpoint whose deliveries have all ended failed for this long is disabled (Svix: 5 days).
    webhook_disable_after_s: float = 5 * 24 * 3600.0
    #: Absolute base of the links in payloads (e.g. ``https://api.example.org``); unset = paths only.
    webhook_link_base_url: str | None = None

    # --- a gateway that survives: supervision, read deadlines, caps, timeouts (issue 12) ------
    #: ``serve`` restarts a gateway process that died, after this delay, doubled on each death in a
    #: row up to the max (runtime/supervisor.py); a process that stayed up ``reset_after`` starts over.
    gateway_restart_backoff_min_s: float = Field(default=0.5, gt=0.0)
    gateway_restart_backoff_max_s: float = Field(default=30.0, gt=0.0)
    gateway_restart_reset_after_s: float = Field(default=60.0, ge=0.0)
    #: On SIGTERM a gateway process finishes its requests for at most this long (a ``Prefer: wait``
    #: poll lasts up to max_wait_seconds); the ``serve`` parent kills what is left 5 s later.
    gateway_shutdown_timeout_s: float = Field(default=65.0, ge=0.0)
    #: A request's head (request line + headers) must arrive within this many seconds of its first
    #: byte, or the connection is closed (slowloris; gateway/http/serving.py).
    gateway_header_timeout_s: float = Field(default=10.0, gt=0.0)
    #: An idle keep-alive connection is closed after this long (aiohttp's keep-alive timer). Keep it
    #: above the idle timeout of a load balancer in front (60 s for most), or it answers 502s.
    gateway_keepalive_timeout_s: float = Field(default=75.0, gt=0.0)
    #: A request body must arrive within ``body_timeout`` + its declared length / ``body_min_rate``
    #: seconds (a chunked one: as if it were max_body_bytes long); otherwise 408 and the connection
    #: closes. The defaults give a 32 MiB upload 158 s (at least ~2 Mbit/s).
    gateway_body_timeout_s: float = Field(default=30.0, gt=0.0)
    gateway_body_min_bytes_per_s: int = Field(default=256 * 1024, ge=1)
    #: Open client connections per gateway process. At the cap a new connection first evicts the
    #: longest-waiting connection that has no request in progress (idle keep-alive or an unfinished
    #: head); only when every connection is mid-request is the new one answered 503 and closed.
    gateway_max_connections: int = Field(default=1000, ge=1)
    #: Requests of one tenant in their handlers at once per gateway process (0: no limit); beyond it 429
    #: ``too_many_concurrent_requests``. Far below gateway_max_connections, so that one tenant's stalled
    #: uploads or long waits cannot fill the connection cap and lock the others (and /healthz) out.
    tenant_max_concurrent_requests: int = Field(default=100, ge=0)
    #: How long a request waits for one of the gateway_db_pool_size connections before it gets
    #: 503 with Retry-After (SQLAlchemy's default is 30 s, answered 500).
    gateway_db_pool_timeout_s: float = Field(default=5.0, gt=0.0)
    #: A Redis call on the request path (the rate limiter's) that takes longer fails, and the
    #: request gets 503 with Retry-After instead of hanging on a Redis that stopped answering.
    gateway_redis_timeout_s: float = Field(default=2.0, gt=0.0)
    #: Postgres cancels a statement of the gateway or a worker running longer than this (0: never);
    #: the gateway answers 503. ``medparse migrate`` runs without it.
    db_statement_timeout_s: float = Field(default=30.0, ge=0.0)
    #: Postgres ends a session left idle inside an open transaction this long (0: never).
    db_idle_in_transaction_timeout_s: float = Field(default=60.0, ge=0.0)
    #: Submissions waiting for their group commit per gateway process, in jobs and image bytes;
    #: beyond either the submission answers 503 ``submit_queue_full`` with Retry-After.
    submit_queue_max_jobs: int = Field(default=1024, ge=1)
    submit_queue_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1)

    # --- bounded decoding (issue 12): full decodes of uploads in limited processes (medparse/decode_pool.py) ---
    #: Decode processes per gateway (and per worker) process: full decodes of uploads and the result
    #: renderers run there, at most this many at once. The deployment-wide bound is this times the
    #: number of gateway and worker processes.
    decode_processes: int = Field(default=2, ge=1, le=64)
    #: Address space one decode may use beyond its process's baseline after imports (RLIMIT_AS). A
    #: legitimate volume at max_volume_voxels as float64 needs ~1.2 GB (inflated file, values, a copy).
    decode_memory_limit_bytes: int = Field(default=2 * 1024**3, ge=64 * 1024**2)
    #: Wall-clock time one decode (or rendering) may take before its process is killed: 422
    #: ``image_too_complex`` at the gateway, a failed job in a worker.
    decode_timeout_s: float = Field(default=30.0, gt=0.0)
    #: Input bytes being decoded at once per process; one input larger than this still runs, alone.
    decode_max_inflight_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    #: Gateway requests waiting for a decode slot per gateway process; more answer 503 ``decode_busy`` at once.
    decode_max_waiting: int = Field(default=32, ge=0)
    #: How long a gateway request waits for a decode slot before it answers 503 ``decode_busy`` (Retry-After).
    decode_queue_wait_s: float = Field(default=10.0, gt=0.0)
    #: Of those, per tenant: one tenant's flood cannot fill the queue (a free slot also goes to the tenant
    #: with the fewest decodes running, so another tenant waits for one decode at most).
    decode_max_waiting_per_tenant: int = Field(default=4, ge=0)

    # --- headers checked before allocating: DICOM/NIfTI structure (medparse/medical, issue 12) ---
    #: A Deflated Explicit VR Little Endian dataset is counted while it inflates, keeping nothing, and
    #: refused above this. 4 x max_body_bytes: deflate rarely gains more than 2-4x on image data, and it
    #: holds the largest uncompressed 16-bit gray image max_image_pixels allows (80 MB) with room.
    max_dicom_inflated_bytes: int = Field(default=128 * 1024 * 1024, ge=1024)
    #: Data elements + sequence items + pixel fragments of one DICOM, all levels: pydicom builds an
    #: object of 300-700 bytes for each (15 us), so this bounds its parse to ~65 MB and ~1.5 s. An
    #: enhanced multi-frame of ~5000 frames (per-frame functional groups) stays below it.
    max_dicom_elements: int = Field(default=100_000, ge=100)
    #: Sequences within sequences: pydicom recurses per level; real files (SR content trees) nest < 20.
    max_dicom_depth: int = Field(default=32, ge=2)
    #: NumberOfFrames of one DICOM, checked before anything is built per frame (a 2-D job still picks
    #: one frame; a volume job is further bound by max_volume_slices and the pixel limit).
    max_dicom_frames: int = Field(default=10_000, ge=1)
    #: NIfTI header extensions (nibabel builds an object per extension; real files carry 0-3).
    max_nifti_extensions: int = Field(default=64, ge=0)
    #: Pages of a TIFF upload, counted before Pillow does (its count is quadratic in the pages: 20,000
    #: one-pixel pages in 2 MB took 10 s); only the first page is segmented.
    max_image_frames: int = Field(default=1024, ge=1)

    # --- webhook delivery apart from segmentation, time limits that hold (issue 12) -------------
    #: Threads of a webhook worker (``medparse worker --role webhooks``); segmentation workers never
    #: consume the webhooks queue.
    webhook_worker_concurrency: int = Field(default=8, ge=1)
    #: Wall-clock deadline of one delivery attempt: connect + TLS + sending the request + the response
    #: headers (the body is never read). A receiver slower than this is a failed attempt (retried on the
    #: schedule), whatever its trickle rate; webhook_timeout_s still bounds each single read or write.
    webhook_attempt_deadline_s: float = Field(default=20.0, gt=0.0)
    #: Deliveries being sent at once, per tenant and per target host (host:port), across all webhook
    #: workers (Redis; in-process when embedded). A delivery that finds no free slot is not attempted: it
    #: goes back to pending for webhook_slot_wait_s, holding no thread.
    webhook_max_in_flight_per_tenant: int = Field(default=4, ge=1)
    webhook_max_in_flight_per_host: int = Field(default=4, ge=1)
    webhook_slot_wait_s: float = Field(default=1.0, gt=0.0)
    #: Wall-clock deadline of one HTTP attempt to the model endpoint (connect + send + the whole answer);
    #: unset = connect + read timeout + 5 s (so the 3-D client's longer read timeout gets a longer one).
    #: A trickling endpoint defeats per-read timeouts, never this.
    endpoint_request_deadline_s: float | None = Field(default=None, gt=0.0)

    # --- database roles, stored-bytes quota, audit log (issue 12, migration 0007) ----------------
    #: The workers', sweeper's and CLI's database (a login role in ``medparse_system``, which the
    #: row-level security policies let see every tenant). Unset: ``database_url``. The gateway never
    #: uses it, so its own role (a member of ``medparse_app`` only) cannot reach other tenants.
    system_database_url: str | None = None
    #: Bytes a tenant may keep stored (inputs + masks + medical outputs; counted in ``tenant_usage``);
    #: a submission that would go over it gets 429 ``storage_quota_exceeded``. 0 = no limit.
    #: A tenant's ``max_stored_bytes`` overrides it.
    tenant_max_stored_bytes: int = Field(default=10 * 1024**3, ge=0)

    # --- operators and tenant admins apart (issue 12, gateway/http/auth.py) ----------------------------
    #: SHA-256 hex digest of the operator's bearer token (comma-separated: several, while one is
    #: rotated out). The operator creates tenants, sets quotas and manages any tenant's keys over
    #: HTTP; unset (default), only the CLI can. Only the digest is configured, so the token itself is
    #: stored nowhere on the server: ``openssl rand -hex 32`` makes one (at least 32 characters),
    #: ``printf %s "$TOKEN" | sha256sum`` its digest.
    operator_token_sha256: SecretStr | None = None

    @field_validator("operator_token_sha256")
    @classmethod
    def _operator_digests_are_sha256_hex(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None  # an empty variable (compose's ``${VAR:-}``) means unset
        for digest in value.get_secret_value().split(","):
            digest = digest.strip().lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError("operator_token_sha256: comma-separated SHA-256 hex digests (64 hex digits)")
        return value

    # --- embedded default ---------------------------------------------------------------------
    emulator_port: int = 8081

    @model_validator(mode="after")
    def _time_limits_fit_visibility_timeout(self) -> Settings:
        # A task outliving the broker's visibility timeout is redelivered and runs twice (celery#5935).
        if not self.task_soft_time_limit_s < self.task_time_limit_s < self.broker_visibility_timeout_s:
            raise ValueError(
                "need task_soft_time_limit_s < task_time_limit_s < broker_visibility_timeout_s"
            )
        if self.job_heartbeat_s * 2 > self.job_lease_s:
            raise ValueError("job_heartbeat_s must be at most half of job_lease_s")
        return self

    @property
    def embedded(self) -> bool:
        """True when no Redis is configured: local queue, local events, SQLite unless a DB is set."""
        return self.redis_url is None

    @property
    def async_database_url(self) -> str:
        if self.database_url:
            return to_async_url(self.database_url)
        return f"sqlite+aiosqlite:///{(self.data_dir / 'medparse.sqlite3').resolve()}"

    @property
    def sync_database_url(self) -> str:
        return to_sync_url(self.async_database_url)

    @property
    def sync_system_database_url(self) -> str:
        if self.system_database_url:
            return to_sync_url(to_async_url(self.system_database_url))
        return self.sync_database_url

    @property
    def endpoint_max_in_flight(self) -> int:
        capacity = self.endpoint_max_concurrent_per_instance * self.endpoint_instance_count
        extra = math.ceil(capacity * self.endpoint_in_flight_headroom)
        return max(capacity, min(capacity + extra, 2 * capacity - 1))


def to_async_url(url: str) -> str:
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix):]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///"):]
    return url


def to_sync_url(url: str) -> str:
    if url.startswith("postgresql+asyncpg://"):
        return "postgresql+psycopg://" + url[len("postgresql+asyncpg://"):]
    if url.startswith("sqlite+aiosqlite:///"):
        return "sqlite:///" + url[len("sqlite+aiosqlite:///"):]
    return url


def masked_url(url: str) -> str:
    """The URL with any password replaced, for logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a SQLAlchemy URL (e.g. redis://)
        head, sep, tail = url.rpartition("@")
        if not sep:
            return url
        scheme, _, _creds = head.partition("://")
        return f"{scheme}://***@{tail}"


def secret_value(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret is not None else None


__all__ = ["EndpointAuthMode", "Settings", "masked_url", "secret_value", "to_async_url", "to_sync_url"]
