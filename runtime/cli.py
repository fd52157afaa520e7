"""``medparse`` command line: serve, worker, migrate, emulator, tenant, run (embedded default)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

from db.tenants import DEFAULT_SCOPES
from medparse.settings import Settings

if TYPE_CHECKING:
    from db.tenants import KeyRecord
    from gateway.deps import Store

T = TypeVar("T")


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
    )


def _serve_one(settings: Settings, reuse_port: bool) -> None:
    from gateway.http.serving import run_gateway

    run_gateway(settings, reuse_port=reuse_port)


def gateway_process_count(settings: Settings, requested: int | None) -> int:
    """``--processes``, else the setting, else one per CPU this process may run on (always one in the
    embedded mode): a container limited to 2 CPUs on a 64-core host starts 2, not 64 pools."""
    processes = requested or settings.gateway_processes
    if processes > 1 and settings.embedded:
        raise SystemExit("the embedded mode runs one gateway process (set MEDPARSE_REDIS_URL for more)")
    if processes:
        return processes
    return 1 if settings.embedded else max(1, usable_cpus())


def usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cmd_serve(settings: Settings, args: argparse.Namespace) -> None:
    processes = gateway_process_count(settings, args.processes)
    print(f"medparse gateway listening on http://{settings.host}:{settings.port} ({processes} process(es))",
          flush=True)
    if processes == 1:
        _serve_one(settings, reuse_port=False)
        return
    from functools import partial

    from runtime.supervisor import Supervisor

    Supervisor(
        partial(_serve_one, settings, True),
        processes,
        backoff_min_s=settings.gateway_restart_backoff_min_s,
        backoff_max_s=settings.gateway_restart_backoff_max_s,
        reset_after_s=settings.gateway_restart_reset_after_s,
        stop_timeout_s=settings.gateway_shutdown_timeout_s + 5.0,
    ).run()


def cmd_worker(settings: Settings, args: argparse.Namespace) -> None:
    """``--role segmentation`` (default) runs jobs; ``--role webhooks`` delivers webhooks. Each
    consumes only its own queue, so a slow receiver never holds a segmentation thread."""
    from workers.celery_app import ROLE_QUEUES, make_celery, make_webhook_celery

    if args.role == "webhooks":
        app = make_webhook_celery(settings)
        concurrency = args.concurrency or settings.webhook_worker_concurrency
    else:
        app = make_celery(settings)
        concurrency = args.concurrency or settings.worker_concurrency
    app.worker_main(
        [
            "worker",
            f"--pool={args.pool}",
            f"--concurrency={concurrency}",
            f"--queues={ROLE_QUEUES[args.role]}",
            f"--hostname={args.role}@%h",
            "--without-gossip",
            "--without-mingle",
            f"--loglevel={settings.log_level}",
        ]
    )


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> None:
    from runtime.migrate import upgrade

    # A migration may rewrite a large table: no statement or idle-in-transaction timeout for it.
    upgrade(settings.model_copy(update={"db_statement_timeout_s": 0.0, "db_idle_in_transaction_timeout_s": 0.0}))
    print("database migrated to head")


def cmd_emulator(settings: Settings, args: argparse.Namespace) -> None:
    from emulator.cli import run_from_args

    run_from_args(args)


def _administer(settings: Settings, work: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``work``, made of the admin use cases the API runs too (gateway/admin/services.py), on a
    ``Store`` of the CLI's own: the system role's login (it sees every tenant), disposed of after.
    A refusal (a domain error) exits non-zero with its detail."""
    from db.engine import make_async_engine
    from gateway.deps import Store
    from gateway.errors import DomainError

    async def run() -> T:
        engine = make_async_engine(settings, system_scope=True)
        try:
            return await work(Store(engine, settings))
        finally:
            await engine.dispose()

    try:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(run())
        # Called from a coroutine (the embedded runner, async tests): an event loop of its own, on a
        # thread, while the caller's waits as it did for the synchronous CLI.
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, run()).result()
    except DomainError as error:
        raise SystemExit(error.detail) from None


def create_tenant(
    settings: Settings, name: str, *, reuse: bool = False, scopes: list[str] | None = None
) -> tuple[uuid.UUID, str]:
    """Create tenant ``name`` (or reuse it) and a new API key for it; returns (id, key)."""
    from gateway.admin import services

    async def create(store: Store) -> tuple[uuid.UUID, str]:
        tenant, made = await services.onboard_tenant(
            store, name, scopes or DEFAULT_SCOPES, reuse=reuse, audit_actor="cli"
        )
        return tenant.id, made.plaintext

    return _administer(settings, create)


def cmd_tenant(settings: Settings, args: argparse.Namespace) -> None:
    scopes = [*DEFAULT_SCOPES, "admin"] if args.admin else None
    tenant_id, key = create_tenant(settings, args.name, scopes=scopes)
    print(f"tenant {args.name} ({tenant_id})")
    print(f"API key: {key}")


def cmd_tenant_list(settings: Settings, args: argparse.Namespace) -> None:
    from gateway.admin import services

    for tenant in _administer(settings, services.list_tenants):
        quotas = {k: getattr(tenant, k) for k in (
            "rate_limit_rps", "max_queued_jobs", "max_running_jobs", "max_image_bytes", "max_stored_bytes",
        )}
        overrides = ", ".join(f"{k}={v}" for k, v in quotas.items() if v is not None) or "defaults"
        print(f"{tenant.id}  {tenant.name}  ({overrides})")


def cmd_key_create(settings: Settings, args: argparse.Namespace) -> None:
    from gateway.admin import services

    expires = datetime.now(UTC) + timedelta(days=args.expires_days) if args.expires_days else None

    async def create(store: Store) -> services.NewKey:
        tenant = await services.tenant_named(store, args.tenant)
        return await services.create_key(
            store, tenant.id, sorted(set(args.scope or DEFAULT_SCOPES)), label=args.label, expires_at=expires,
            audit_actor="cli",
        )

    made = _administer(settings, create)
    print(f"key id {made.key.id} for tenant {args.tenant}")
    print(f"API key: {made.plaintext}")


def cmd_key_revoke(settings: Settings, args: argparse.Namespace) -> None:
    from gateway.admin import services

    _administer(settings, lambda store: services.revoke_key(
        store, args.key_id, tenant_id=None, only_active=True, audit_actor="cli"
    ))
    print(f"revoked {args.key_id}")


def cmd_key_list(settings: Settings, args: argparse.Namespace) -> None:
    from gateway.admin import services

    async def keys(store: Store) -> list[KeyRecord]:
        tenant_id = (await services.tenant_named(store, args.tenant)).id if args.tenant else None
        return await services.list_keys(store, tenant_id)

    for key in _administer(settings, keys):
        state = "revoked" if key.revoked_at else "active"
        print(f"{key.id}  tenant={key.tenant_id}  scopes={','.join(key.scopes)}  {state}"
              f"  label={key.label or '-'}  expires={key.expires_at or 'never'}")


def cmd_audit(settings: Settings, args: argparse.Namespace) -> None:
    """The audit log, newest first: who read, deleted or changed which job, key or webhook."""
    import json
    from dataclasses import asdict

    from gateway.admin import services

    since = None
    if args.since:
        try:
            since = datetime.fromisoformat(args.since)
        except ValueError:
            raise SystemExit(f"--since: not an ISO 8601 date or date-time: {args.since!r}") from None
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
    tenant_id = None
    if args.tenant:
        try:
            tenant_id = uuid.UUID(args.tenant)
        except ValueError:
            tenant_id = _administer(settings, lambda store: services.tenant_named(store, args.tenant)).id
    try:
        job_id = uuid.UUID(args.job) if args.job else None
    except ValueError:
        raise SystemExit(f"--job: not a job id: {args.job!r}") from None
    entries = _administer(settings, lambda store: services.audit_entries(
        store, tenant_id=tenant_id, job_id=job_id, since=since, action=args.action, limit=args.limit,
    ))
    for entry in entries:
        if args.json:
            print(json.dumps({k: (str(v) if v is not None and k in ("at", "tenant_id", "job_id") else v)
                              for k, v in asdict(entry).items()}))
        else:
            print(f"{entry.at:%Y-%m-%dT%H:%M:%S%z}  {entry.actor:<8} {entry.key_id or '-':<14} {entry.action:<22}"
                  f" tenant={entry.tenant_id or '-'} job={entry.job_id or '-'} target={entry.target or '-'}"
                  f" request={entry.request_id or '-'}")


def cmd_run(settings: Settings, args: argparse.Namespace) -> None:
    from runtime.embedded import run_embedded

    asyncio.run(run_embedded(settings))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medparse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP gateway")
    serve.add_argument("--processes", type=int, default=None, help="gateway processes (default: setting)")
    serve.set_defaults(func=cmd_serve)
    worker = sub.add_parser("worker", help="run a Celery worker")
    worker.add_argument("--concurrency", type=int, default=None)
    worker.add_argument("--pool", default="threads", choices=["threads", "prefork", "solo"])
    worker.add_argument(
        "--role", default="segmentation", choices=["segmentation", "webhooks"],
        help="segmentation jobs (default), or webhook deliveries (own queue and threads: "
        "MEDPARSE_WEBHOOK_WORKER_CONCURRENCY)",
    )
    worker.set_defaults(func=cmd_worker)
    sub.add_parser("migrate", help="alembic upgrade head").set_defaults(func=cmd_migrate)
    emulator = sub.add_parser("emulator", help="run the MedImageParse endpoint emulator")
    from emulator.cli import add_arguments

    add_arguments(emulator)
    emulator.set_defaults(func=cmd_emulator)
    tenant = sub.add_parser("tenant", help="manage tenants")
    tenant_sub = tenant.add_subparsers(dest="tenant_command", required=True)
    create = tenant_sub.add_parser("create", help="create a tenant and print its first API key")
    create.add_argument("name")
    create.add_argument("--admin", action="store_true", help="the key also gets the 'admin' scope")
    create.set_defaults(func=cmd_tenant)
    tenant_sub.add_parser("list", help="list tenants and their quota overrides").set_defaults(func=cmd_tenant_list)
    key = sub.add_parser("key", help="manage API keys")
    key_sub = key.add_subparsers(dest="key_command", required=True)
    key_create = key_sub.add_parser("create", help="create an API key for a tenant (printed once)")
    key_create.add_argument("tenant", help="tenant name")
    key_create.add_argument("--scope", action="append", choices=["jobs:read", "jobs:write", "admin"])
    key_create.add_argument("--label")
    key_create.add_argument("--expires-days", type=float)
    key_create.set_defaults(func=cmd_key_create)
    key_revoke = key_sub.add_parser("revoke", help="revoke a key at once")
    key_revoke.add_argument("key_id")
    key_revoke.set_defaults(func=cmd_key_revoke)
    key_list = key_sub.add_parser("list", help="list keys (never their secrets)")
    key_list.add_argument("tenant", nargs="?")
    key_list.set_defaults(func=cmd_key_list)
    audit = sub.add_parser("audit", help="query the audit log (newest first)")
    audit.add_argument("--tenant", help="tenant name or id")
    audit.add_argument("--job", help="job id")
    audit.add_argument("--since", help="ISO 8601 date or date-time (UTC unless it says)")
    audit.add_argument("--action", help="e.g. job.delete, job.result.read, key.mint")
    audit.add_argument("--limit", type=int, default=100)
    audit.add_argument("--json", action="store_true", help="one JSON object per line")
    audit.set_defaults(func=cmd_audit)
    sub.add_parser("run", help="embedded default: migrate, emulator, worker and gateway in one tree").set_defaults(
        func=cmd_run
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    settings = Settings()  # the one place the environment is read
    _configure_logging(settings)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    args.func(settings, args)


if __name__ == "__main__":
    main()
