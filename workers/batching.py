"""Several jobs' images in one endpoint request (``input_data.data`` rows), up to a setting.

Worker threads of one process hand their row to the batcher and wait up to
``endpoint_batch_wait_s`` for company; the first thread whose wait ends sends every row pending
at that moment (at most ``endpoint_max_rows_per_request``), or a full batch goes out at once.
No extra threads: a sender is always one of the waiting task threads, so the global in-flight
cap still counts one slot per HTTP attempt. One bad image must not fail its batch-mates: a
batch the endpoint rejects as input (4xx) is retried row by row.

A batch goes out under its sender's job deadline (medparse/http_deadline.py), which may be nearer
than a batch-mate's: when that deadline cuts the call, a batch-mate whose own job still has time
sends its row again alone, on its own thread and deadline, instead of failing ``timeout`` for
another job's time limit; and no thread waits for a batch past its own job's deadline.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, wait
from dataclasses import dataclass, field

from medparse import http_deadline
from medparse.endpoint.client import EndpointClient, ScoreRow
from medparse.endpoint.errors import EndpointRejectedInput, JobTimeLimitExceeded
from medparse.endpoint.protocol import RowResult, ScoreResult


@dataclass(frozen=True)
class ScoredRow:
    row: RowResult
    call: ScoreResult
    #: rows that shared the request
    batch_size: int


class _SendAlone(Exception):
    """The batch's sender ran out of its own job's time, this row's job has time left."""


def _deadline() -> float | None:
    left = http_deadline.remaining_s()
    return None if left is None else time.monotonic() + left


@dataclass
class _Pending:
    row: ScoreRow
    job_id: str
    future: Future[ScoredRow] = field(default_factory=Future)
    #: the handing thread's job deadline (time.monotonic), None without one
    deadline: float | None = field(default_factory=_deadline)

    def has_time_left(self) -> bool:
        return self.deadline is None or self.deadline > time.monotonic()


class RowBatcher:
    def __init__(self, client: EndpointClient, max_rows: int, wait_s: float) -> None:
        self._client = client
        self._max_rows = max(1, max_rows)
        self._wait_s = wait_s
        self._lock = threading.Lock()
        self._pending: list[_Pending] = []

    def score(self, row: ScoreRow, *, job_id: str, client_request_id: str | None = None) -> ScoredRow:
        """``client_request_id`` is used when the row goes alone (always, with one row per request)."""
        if self._max_rows == 1:
            return self._alone(row, job_id, client_request_id)
        mine = _Pending(row, job_id)
        with self._lock:
            self._pending.append(mine)
            batch = self._take() if len(self._pending) >= self._max_rows else None
        left = http_deadline.remaining_s()
        wait_s = self._wait_s if left is None else max(0.0, min(self._wait_s, left))
        if batch is None and not wait([mine.future], timeout=wait_s).done:
            with self._lock:
                batch = self._take() if mine in self._pending else None
        if batch is not None:
            self._send(batch, sender=mine)
        left = http_deadline.remaining_s()
        if not wait([mine.future], timeout=None if left is None else max(0.0, left)).done:
            # another thread is sending this row, past this job's own deadline
            raise JobTimeLimitExceeded(
                "the job reached its processing time limit while its image was being scored in a batch; "
                "try again later"
            )
        try:
            return mine.future.result()
        except _SendAlone:
            return self._alone(row, job_id, client_request_id)

    def _alone(self, row: ScoreRow, job_id: str, client_request_id: str | None) -> ScoredRow:
        call = self._client.score([row], job_id=job_id, client_request_id=client_request_id)
        return ScoredRow(call.rows[0], call, 1)

    def _take(self) -> list[_Pending]:
        batch, self._pending = self._pending[: self._max_rows], self._pending[self._max_rows :]
        return batch

    def _send(self, batch: list[_Pending], sender: _Pending) -> None:
        job_ids = ",".join(p.job_id for p in batch)
        try:
            call = self._client.score([p.row for p in batch], job_id=job_ids)
        except EndpointRejectedInput as exc:
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            for pending in batch:  # find the culprit without failing the others
                self._send([pending], sender)
            return
        except JobTimeLimitExceeded as exc:  # the sender's job's time, not necessarily the others'
            for pending in batch:
                alone = pending is not sender and pending.has_time_left()
                pending.future.set_exception(_SendAlone() if alone else exc)
            return
        except BaseException as exc:  # the call failed for every row alike
            for pending in batch:
                pending.future.set_exception(exc)
            return
        for pending, result in zip(batch, call.rows, strict=True):
            pending.future.set_result(ScoredRow(result, call, len(batch)))
