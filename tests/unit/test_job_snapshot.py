"""The terminal job a worker's notification carries reads back as the database row would."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from db.job_record import Job as JobRecord
from db.job_record import MaskSummary
from db.job_snapshot import MAX_SNAPSHOT_BYTES, decode_snapshot, encode_snapshot
from db.models import Job
from medparse.events import decode_event, encode_event


def _row(**overrides: object) -> dict[str, object]:
    now = datetime(2026, 11, 27, 22, 15, 1, 123456, tzinfo=UTC)
    row: dict[str, object] = {c.name: None for c in Job.__table__.c}
    row.update(
        id=uuid.uuid4(), tenant_id=uuid.uuid4(), status="succeeded", prompts=["liver", "kidney"], options={},
        input_format="png", input_width=333, input_height=211, input_bytes=1234, created_at=now, updated_at=now,
        started_at=now, completed_at=now, attempts=1, priority=0, prompt_count=2, endpoint_calls=1,
        endpoint_seconds=0.05, result_width=333, result_height=211, result_meta={"scale": 3.07},
    )
    row.update(overrides)
    return row


def test_round_trip_restores_types() -> None:
    row = _row()
    masks = [{"index": 0, "prompt": "liver", "label": "liver", "area_px": 10, "bbox": [1, 2, 3, 4],
              "height": 211, "width": 333, "data": b"not sent"}]
    data = encode_snapshot(JobRecord.from_row(row), [MaskSummary.from_row(m) for m in masks])
    assert data is not None and b"not sent" not in data
    back, back_masks = decode_snapshot(data)
    assert back.as_row() == row
    assert [m.as_row() for m in back_masks] == [{k: v for k, v in masks[0].items() if k != "data"}]


def test_too_large_rows_are_not_sent() -> None:
    row = _row(result_meta={"blob": "x" * MAX_SNAPSHOT_BYTES})
    assert encode_snapshot(JobRecord.from_row(row), []) is None


def test_event_messages_carry_the_snapshot_or_only_the_id() -> None:
    job_id = str(uuid.uuid4())
    assert decode_event(encode_event(job_id)) == (job_id, None)
    assert decode_event(encode_event(job_id, b'{"job": {}}\n')) == (job_id, b'{"job": {}}\n')
