"""The ports chosen once at start-up (medparse/backends.py), and the embedded default's transports."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from medparse import backends
from medparse.async_events import RedisAsyncJobEvents, SocketAsyncJobEvents
from medparse.events import RedisJobEvents, SocketJobEvents
from medparse.queue import FolderJobQueue, RedisJobQueue, celery_config
from medparse.settings import Settings


def test_the_settings_choose_every_port_once(tmp_path: Path) -> None:
    embedded = Settings(data_dir=tmp_path / "var")
    production = Settings(data_dir=tmp_path / "var", redis_url="redis://127.0.0.1:9/0")
    assert isinstance(backends.job_queue(embedded), FolderJobQueue)
    assert isinstance(backends.job_events(embedded), SocketJobEvents)
    assert isinstance(backends.async_job_events(embedded), SocketAsyncJobEvents)
    assert backends.shared_redis(embedded) is None
    assert isinstance(backends.job_queue(production), RedisJobQueue)
    assert isinstance(backends.job_events(production), RedisJobEvents)
    assert isinstance(backends.async_job_events(production), RedisAsyncJobEvents)
    assert backends.shared_redis(production) is not None


def test_the_celery_configuration_takes_its_broker_from_the_queue(tmp_path: Path) -> None:
    embedded = Settings(data_dir=tmp_path / "var")
    folder = celery_config(embedded, backends.job_queue(embedded))
    assert folder["broker_url"] is None and folder["broker_transport"].endswith(":AtomicFilesystemTransport")
    assert (tmp_path / "var" / "queue" / "control").is_dir()
    production = Settings(data_dir=tmp_path / "var", redis_url="redis://127.0.0.1:9/0", redis_namespace="ns")
    redis_config = celery_config(production, backends.job_queue(production))
    assert redis_config["broker_url"] == "redis://127.0.0.1:9/0"
    assert redis_config["broker_transport_options"]["global_keyprefix"] == "ns:"
    assert folder["task_acks_late"] is redis_config["task_acks_late"] is True


async def test_embedded_job_changes_reach_the_gateway_and_nudges_reach_the_dispatcher(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var")
    gateway_side, worker_side = backends.async_job_events(settings), backends.job_events(settings)
    received: list[tuple[str, bytes | None]] = []
    arrived = asyncio.Event()

    def on_job_changed(job_id: str, snapshot: bytes | None) -> None:
        received.append((job_id, snapshot))
        arrived.set()

    await gateway_side.start(on_job_changed)
    try:
        worker_side.job_changed("job-1", b'{"job": {}}')
        await asyncio.wait_for(arrived.wait(), 5)
        assert received == [("job-1", b'{"job": {}}')]

        woken, stopped = threading.Event(), threading.Event()
        listener = threading.Thread(target=worker_side.listen_for_dispatch, args=(woken.set, stopped), daemon=True)
        listener.start()
        try:
            for _ in range(50):  # until the listener has bound its socket
                await gateway_side.nudge_dispatchers()
                if await asyncio.to_thread(woken.wait, 0.1):
                    break
            assert woken.is_set()
        finally:
            stopped.set()
            listener.join(5)
    finally:
        await gateway_side.close()
    assert not (tmp_path / "var" / "job-events.sock").exists()


async def test_the_folder_queue_is_ready_only_while_its_folder_exists(tmp_path: Path) -> None:
    queue = FolderJobQueue(Settings(data_dir=tmp_path / "var"))
    assert (await queue.check()).startswith("unavailable")
    queue.broker_options()
    assert await queue.check() == "ok"


async def test_an_undelivered_nudge_is_not_an_error(tmp_path: Path) -> None:
    events = backends.async_job_events(Settings(data_dir=tmp_path / "var"))  # no dispatcher listening
    await events.nudge_dispatchers()
    await events.close()
