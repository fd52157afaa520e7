"""``medparse worker --role``: each role consumes only its own queue with its own thread count."""

from __future__ import annotations

from typing import Any

import pytest

from medparse.settings import Settings
from runtime import cli


class FakeApp:
    def __init__(self, role: str) -> None:
        self.role = role
        self.argv: list[str] = []

    def worker_main(self, argv: list[str]) -> None:
        self.argv = argv


@pytest.mark.parametrize(("role", "queue", "threads"), [
    ("segmentation", "segmentation", "5"), ("webhooks", "webhooks", "3"),
])
def test_each_role_consumes_only_its_queue(monkeypatch: pytest.MonkeyPatch, role: str, queue: str,
                                           threads: str) -> None:
    import workers.celery_app as celery_app

    made: list[FakeApp] = []

    def fake(kind: str) -> Any:
        def make(settings: Settings, **_: Any) -> FakeApp:
            made.append(FakeApp(kind))
            return made[-1]
        return make

    monkeypatch.setattr(celery_app, "make_celery", fake("segmentation"))
    monkeypatch.setattr(celery_app, "make_webhook_celery", fake("webhooks"))
    settings = Settings(worker_concurrency=5, webhook_worker_concurrency=3)
    argv = ["worker"] if role == "segmentation" else ["worker", "--role", "webhooks"]
    args = cli.build_parser().parse_args(argv)
    args.func(settings, args)
    (app,) = made
    assert app.role == role
    assert f"--queues={queue}" in app.argv and f"--concurrency={threads}" in app.argv
    assert f"--hostname={role}@%h" in app.argv


def test_an_unknown_role_is_refused() -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["worker", "--role", "everything"])
