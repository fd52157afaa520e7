"""A terminal job as it was committed, carried inside its completion notification.

The worker that ends a job has the whole row in hand (the compare-and-set's RETURNING) and the
masks it just inserted. Sending them with the notification lets a ``Prefer: wait`` waiter answer
at once instead of re-reading the job: the snapshot is taken from the committed transaction, so
it says what a read right after the commit would say. A waiter that gets no snapshot (an old
worker, a too-large row, a lost message) reads Postgres as before.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Uuid

from db.job_record import Job, MaskSummary
from db.models import Job as JobModel
from db.types import UtcDateTime

#: Larger snapshots (a DICOM job's header details, say) are not sent; the waiter reads instead.
MAX_SNAPSHOT_BYTES = 32 * 1024

_DATETIME_COLUMNS = frozenset(c.name for c in JobModel.__table__.c if isinstance(c.type, UtcDateTime))
_UUID_COLUMNS = frozenset(c.name for c in JobModel.__table__.c if isinstance(c.type, Uuid))


def encode_snapshot(job: Job, masks: Sequence[MaskSummary]) -> bytes | None:
    """The job (all ``jobs`` columns) and its mask summaries, or None when too large to send."""
    data = orjson.dumps({"job": job.as_row(), "masks": [m.as_row() for m in masks]})
    return data if len(data) <= MAX_SNAPSHOT_BYTES else None


def decode_snapshot(data: bytes) -> tuple[Job, list[MaskSummary]]:
    """``(job, mask summaries)`` with the values a database read gives."""
    parsed = orjson.loads(data)
    row: dict[str, Any] = parsed["job"]
    for name in _DATETIME_COLUMNS:
        if row.get(name) is not None:
            row[name] = datetime.fromisoformat(row[name])
    for name in _UUID_COLUMNS:
        if row.get(name) is not None:
            row[name] = uuid.UUID(row[name])
    return Job.from_row(row), [MaskSummary.from_row(m) for m in parsed["masks"]]
