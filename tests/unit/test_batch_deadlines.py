"""A batch is sent under its sender's job deadline: a batch-mate whose own job still has time must
not fail ``timeout`` because the sender's job ran out (workers/batching.py, medparse/http_deadline.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np

from medparse import http_deadline
from medparse.endpoint.client import ScoreRow
from medparse.endpoint.errors import EndpointError, JobTimeLimitExceeded
from medparse.endpoint.protocol import RowResult, ScoreResult
from workers.batching import RowBatcher

ANSWER_S = 0.5


class SlowEndpoint:
    """Answers after ANSWER_S, or is cut by the calling thread's job deadline, as EndpointClient is."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def score(self, rows: Sequence[ScoreRow], *, job_id: str, client_request_id: str | None = None) -> ScoreResult:
        self.calls.append(len(rows))
        left = http_deadline.remaining_s()
        if left is not None and left < ANSWER_S:
            time.sleep(max(0.0, left))
            raise JobTimeLimitExceeded("the job reached its processing time limit", attempts=1)
        time.sleep(ANSWER_S)
        masks = np.zeros((1, 2, 2), dtype=np.uint8)
        return ScoreResult([RowResult(masks, [r.prompts[0]]) for r in rows], "cr", None, 1, ANSWER_S)


def test_a_batch_mate_with_time_left_is_not_failed_by_the_senders_time_limit() -> None:
    endpoint = SlowEndpoint()
    batcher = RowBatcher(endpoint, max_rows=2, wait_s=5.0)  # type: ignore[arg-type]
    results: dict[str, object] = {}

    def job(name: str, time_left_s: float) -> None:
        with http_deadline.deadline_in(time_left_s):
            try:
                results[name] = batcher.score(ScoreRow(b"png", [name]), job_id=name).row.labels
            except EndpointError as exc:
                results[name] = exc

    fresh = threading.Thread(target=job, args=("fresh", 30.0))
    fresh.start()
    time.sleep(0.1)  # the fresh job waits for a batch-mate; the old job's row fills the batch and sends it
    old = threading.Thread(target=job, args=("old", 0.2))
    old.start()
    for t in (fresh, old):
        t.join(10)
    assert isinstance(results["old"], JobTimeLimitExceeded)
    assert results["fresh"] == ["fresh"], results["fresh"]
    assert endpoint.calls == [2, 1]


def test_no_job_waits_for_its_batch_past_its_own_deadline() -> None:
    endpoint = SlowEndpoint()
    batcher = RowBatcher(endpoint, max_rows=2, wait_s=5.0)  # type: ignore[arg-type]
    results: dict[str, object] = {}
    ended: dict[str, float] = {}
    began = time.monotonic()

    def job(name: str, time_left_s: float) -> None:
        with http_deadline.deadline_in(time_left_s):
            try:
                results[name] = batcher.score(ScoreRow(b"png", [name]), job_id=name).row.labels
            except EndpointError as exc:
                results[name] = exc
        ended[name] = time.monotonic() - began

    old = threading.Thread(target=job, args=("old", 0.25))
    old.start()
    time.sleep(0.05)  # the fresh job's row fills the batch: it sends it, answered after ANSWER_S
    fresh = threading.Thread(target=job, args=("fresh", 30.0))
    fresh.start()
    for t in (fresh, old):
        t.join(10)
    assert results["fresh"] == ["fresh"]
    assert isinstance(results["old"], JobTimeLimitExceeded)
    assert ended["old"] < ANSWER_S, ended


def test_rows_still_share_a_request_when_nobody_runs_out_of_time() -> None:
    endpoint = SlowEndpoint()
    batcher = RowBatcher(endpoint, max_rows=2, wait_s=5.0)  # type: ignore[arg-type]
    results: dict[str, object] = {}

    def job(name: str) -> None:
        with http_deadline.deadline_in(30.0):
            results[name] = batcher.score(ScoreRow(b"png", [name]), job_id=name).batch_size

    threads = [threading.Thread(target=job, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == {"a": 2, "b": 2} and endpoint.calls == [2]


