"""``medparse`` command line: serve, worker, migrate, emulator, tenant, run (embedded default)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import uuid
from datetime import UTC, datetime

from medparse.settings import Settings


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
    )


def cmd_serve(settings: Settings, args: argparse.Namespace) -> None:
    from aiohttp import web

    from gateway.app import create_app

    print(f"medparse gateway listening on http://{settings.host}:{settings.port}", flush=True)
    web.run_app(create_app(settings), host=settings.host, port=settings.port, access_log=None, print=None)


def cmd_worker(settings: Settings, args: argparse.Namespace) -> None:
    from workers.celery_app import make_celery

    app = make_celery(settings)
    app.worker_main(
        [
            "worker",
            f"--pool={args.pool}",
            f"--concurrency={args.concurrency or settings.worker_concurrency}",
            "--without-gossip",
            "--without-mingle",
            f"--loglevel={settings.log_level}",
        ]
    )


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> None:
    from medparse.migrate import upgrade

    upgrade(settings)
    print("database migrated to head")


def cmd_emulator(settings: Settings, args: argparse.Namespace) -> None:
    from emulator.cli import run_from_args

    run_from_args(args)


def create_tenant(settings: Settings, name: str, *, reuse: bool = False) -> tuple[uuid.UUID, str]:
    """Create tenant ``name`` (or reuse it) and a new API key for it; returns (id, key)."""
    from db.engine import make_sync_engine
    from db.tenants import DEFAULT_SCOPES, insert_key_stmt, insert_tenant_stmt, new_api_key, select_tenant_by_name

    engine = make_sync_engine(settings, system_scope=True)
    now = datetime.now(UTC)
    try:
        with engine.begin() as conn:
            tenant_id = conn.execute(select_tenant_by_name(name)).scalar_one_or_none()
            if tenant_id is not None and not reuse:
                raise SystemExit(f"tenant {name!r} already exists")
            if tenant_id is None:
                tenant_id = uuid.uuid4()
                conn.execute(insert_tenant_stmt(tenant_id, name, now))
            issued, secret_hash = new_api_key()
            conn.execute(insert_key_stmt(issued, secret_hash, tenant_id, DEFAULT_SCOPES, now))
    finally:
        engine.dispose()
    return tenant_id, issued.plaintext


def cmd_tenant(settings: Settings, args: argparse.Namespace) -> None:
    tenant_id, key = create_tenant(settings, args.name)
    print(f"tenant {args.name} ({tenant_id})")
    print(f"API key: {key}")


def cmd_run(settings: Settings, args: argparse.Namespace) -> None:
    from medparse.embedded import run_embedded

    asyncio.run(run_embedded(settings))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medparse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the HTTP gateway").set_defaults(func=cmd_serve)
    worker = sub.add_parser("worker", help="run a Celery worker")
    worker.add_argument("--concurrency", type=int, default=None)
    worker.add_argument("--pool", default="threads", choices=["threads", "prefork", "solo"])
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
    create.set_defaults(func=cmd_tenant)
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
