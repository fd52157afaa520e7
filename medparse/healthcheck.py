"""Container healthchecks (docker-compose.yml); exit status 0 when healthy, 1 otherwise.

``python -m medparse.healthcheck http URL``: the URL answers 200 (the gateway's ``/healthz``, the
emulator's ``/``); the image has Python but no curl.
``python -m medparse.healthcheck worker ROLE``: the Celery worker ``ROLE@<this host>`` answers a
remote-control ping through the broker, so its consumer loop is alive and reaches Redis.
"""

from __future__ import annotations

import socket
import sys
import urllib.error
import urllib.request

from medparse.settings import Settings


def http_ok(url: str, timeout_s: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (a URL we configure)
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def worker_answers(settings: Settings, role: str, timeout_s: float = 5.0) -> bool:
    from celery import Celery

    from medparse.backends import job_queue
    from medparse.queue import celery_config

    app = Celery("medparse-healthcheck", set_as_current=False)
    app.conf.update(celery_config(settings, job_queue(settings)))
    try:
        replies = app.control.ping(destination=[f"{role}@{socket.gethostname()}"], timeout=timeout_s)
    except Exception:  # the broker is unreachable: not healthy
        return False
    finally:
        app.close()
    return bool(replies)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "http":
        return 0 if http_ok(argv[1]) else 1
    if len(argv) == 2 and argv[0] == "worker":
        return 0 if worker_answers(Settings(), argv[1]) else 1
    print("usage: python -m medparse.healthcheck (http URL | worker ROLE)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
