"""Publishing job ids to the broker without blocking the event loop.

``apply_async`` on the loop costs ~1 ms and caps a process near 780 req/s (performance-limits
§5), so ids go into an asyncio queue and one thread publishes them in batches over one
producer connection. A publish that fails is only logged: the job is already committed with a
``dispatched_at`` stamp, and the sweeper publishes it again once that stamp is old.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor

import redis.asyncio as aioredis

from medparse.queue import SEGMENT_TASK, embedded_queue_dir, make_publisher_app
from medparse.settings import Settings

log = logging.getLogger(__name__)

MAX_BATCH = 512


class JobPublisher:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._app = make_publisher_app(settings)
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="job-publisher")
        self._task: asyncio.Task[None] | None = None
        self._redis = aioredis.Redis.from_url(settings.redis_url) if settings.redis_url else None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="job-publisher")

    def publish(self, job_id: str) -> None:
        self._queue.put_nowait(job_id)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await loop.run_in_executor(self._executor, self._send_batch, batch)

    def _send_batch(self, job_ids: list[str]) -> None:
        try:
            with self._app.producer_or_acquire() as producer:
                for job_id in job_ids:
                    self._app.send_task(
                        SEGMENT_TASK,
                        args=[job_id],
                        task_id=job_id,
                        producer=producer,
                        retry=True,
                        retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2},
                    )
        except Exception as exc:  # broker down: the sweeper re-publishes from Postgres
            log.warning("publishing %d job(s) failed (%s); the sweeper will retry", len(job_ids), exc)

    async def check(self) -> str:
        if self._redis is None:
            return "ok" if embedded_queue_dir(self._settings).is_dir() else "unavailable: queue folder missing"
        try:
            await asyncio.wait_for(self._redis.ping(), timeout=2)
            return "ok"
        except Exception as exc:  # any failure means not ready
            return f"unavailable: {type(exc).__name__}"

    async def close(self) -> None:
        # Give queued ids a moment to go out; whatever is left the sweeper will publish.
        for _ in range(50):
            if self._queue.empty():
                break
            await asyncio.sleep(0.02)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)
        if self._redis is not None:
            await self._redis.aclose()
