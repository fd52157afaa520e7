"""``medparse`` command line: serve, worker, migrate, emulator, tenant, run (embedded default)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from db.tenants import DEFAULT_SCOPES
from medparse.settings import Settings


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


def create_tenant(
    settings: Settings, name: str, *, reuse: bool = False, scopes: list[str] | None = None
) -> tuple[uuid.UUID, str]:
    """Create tenant ``name`` (or reuse it) and a new API key for it; returns (id, key)."""
    from db.tenants import insert_key_stmt, insert_tenant_stmt, new_api_key, select_tenant_by_name

    engine = _engine(settings)
    now = datetime.now(UTC)
    try:
        with engine.begin() as conn:
            tenant_id = conn.execute(select_tenant_by_name(name)).scalar_one_or_none()
            if tenant_id is not None and not reuse:
                raise SystemExit(f"tenant {name!r} already exists")
            if tenant_id is None:
                tenant_id = uuid.uuid4()
                conn.execute(insert_tenant_stmt(tenant_id, name, now))
                _audit_cli(conn, "tenant.create", tenant_id=tenant_id)
            issued, secret_hash = new_api_key()
            conn.execute(insert_key_stmt(issued, secret_hash, tenant_id, scopes or DEFAULT_SCOPES, now))
            _audit_cli(conn, "key.mint", tenant_id=tenant_id, target=f"key:{issued.key_id}")
    finally:
        engine.dispose()
    return tenant_id, issued.plaintext


def cmd_tenant(settings: Settings, args: argparse.Namespace) -> None:
    scopes = [*DEFAULT_SCOPES, "admin"] if args.admin else None
    tenant_id, key = create_tenant(settings, args.name, scopes=scopes)
    print(f"tenant {args.name} ({tenant_id})")
    print(f"API key: {key}")


def cmd_tenant_list(settings: Settings, args: argparse.Namespace) -> None:
    from db import tenants

    with _engine(settings).begin() as conn:
        for row in conn.execute(tenants.list_tenants_stmt()).mappings():
            quotas = {k: row[k] for k in (
                "rate_limit_rps", "max_queued_jobs", "max_running_jobs", "max_image_bytes", "max_stored_bytes",
            )}
            overrides = ", ".join(f"{k}={v}" for k, v in quotas.items() if v is not None) or "defaults"
            print(f"{row['id']}  {row['name']}  ({overrides})")


def cmd_key_create(settings: Settings, args: argparse.Namespace) -> None:
    from db import tenants

    now = datetime.now(UTC)
    expires = now + timedelta(days=args.expires_days) if args.expires_days else None
    issued, secret_hash = tenants.new_api_key()
    with _engine(settings).begin() as conn:
        tenant_id = conn.execute(tenants.select_tenant_by_name(args.tenant)).scalar_one_or_none()
        if tenant_id is None:
            raise SystemExit(f"no tenant named {args.tenant!r}")
        conn.execute(tenants.insert_labeled_key_stmt(
            issued, secret_hash, tenant_id, sorted(set(args.scope or DEFAULT_SCOPES)), now,
            label=args.label, expires_at=expires,
        ))
        _audit_cli(conn, "key.mint", tenant_id=tenant_id, target=f"key:{issued.key_id}")
    print(f"key id {issued.key_id} for tenant {args.tenant}")
    print(f"API key: {issued.plaintext}")


def cmd_key_revoke(settings: Settings, args: argparse.Namespace) -> None:
    from db import tenants

    with _engine(settings).begin() as conn:
        revoked = conn.execute(tenants.revoke_key_stmt(args.key_id, datetime.now(UTC))).rowcount
        if revoked:
            _audit_cli(conn, "key.revoke", target=f"key:{args.key_id}"[:200])
    if not revoked:
        raise SystemExit(f"no active key {args.key_id!r}")
    print(f"revoked {args.key_id}")


def cmd_key_list(settings: Settings, args: argparse.Namespace) -> None:
    from db import tenants

    with _engine(settings).begin() as conn:
        tenant_id = None
        if args.tenant:
            tenant_id = conn.execute(tenants.select_tenant_by_name(args.tenant)).scalar_one_or_none()
            if tenant_id is None:
                raise SystemExit(f"no tenant named {args.tenant!r}")
        for row in conn.execute(tenants.list_keys_stmt(tenant_id)).mappings():
            state = "revoked" if row["revoked_at"] else "active"
            print(f"{row['id']}  tenant={row['tenant_id']}  scopes={','.join(row['scopes'])}  {state}"
                  f"  label={row['label'] or '-'}  expires={row['expires_at'] or 'never'}")


def _audit_cli(conn: Any, action: str, *, tenant_id: uuid.UUID | None = None, target: str | None = None) -> None:
    """An operator action taken from the CLI, in the audit log (in the action's own transaction)."""
    from db.audit import INSERT_ENTRY, AuditEntry

    entry = AuditEntry(at=datetime.now(UTC), actor="cli", action=action, tenant_id=tenant_id, target=target)
    conn.execute(INSERT_ENTRY, entry.params())


def cmd_audit(settings: Settings, args: argparse.Namespace) -> None:
    """The audit log, newest first: who read, deleted or changed which job, key or webhook."""
    import json

    from db import audit, tenants

    since = None
    if args.since:
        try:
            since = datetime.fromisoformat(args.since)
        except ValueError:
            raise SystemExit(f"--since: not an ISO 8601 date or date-time: {args.since!r}") from None
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
    with _engine(settings).begin() as conn:
        tenant_id = None
        if args.tenant:
            try:
                tenant_id = uuid.UUID(args.tenant)
            except ValueError:
                tenant_id = conn.execute(tenants.select_tenant_by_name(args.tenant)).scalar_one_or_none()
                if tenant_id is None:
                    raise SystemExit(f"no tenant named {args.tenant!r}") from None
        try:
            job_id = uuid.UUID(args.job) if args.job else None
        except ValueError:
            raise SystemExit(f"--job: not a job id: {args.job!r}") from None
        stmt = audit.select_entries(tenant_id=tenant_id, job_id=job_id, since=since, action=args.action,
                                    limit=args.limit)
        rows = conn.execute(stmt).mappings().all()
    for row in rows:
        if args.json:
            print(json.dumps({k: (str(v) if v is not None and k in ("at", "tenant_id", "job_id") else v)
                              for k, v in row.items()}))
        else:
            print(f"{row['at']:%Y-%m-%dT%H:%M:%S%z}  {row['actor']:<8} {row['key_id'] or '-':<14} {row['action']:<22}"
                  f" tenant={row['tenant_id'] or '-'} job={row['job_id'] or '-'} target={row['target'] or '-'}"
                  f" request={row['request_id'] or '-'}")


def _engine(settings: Settings) -> Any:
    from db.engine import make_sync_engine

    return make_sync_engine(settings, system_scope=True)


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
