"""Thin payloads, event types and the retry schedule."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime

import orjson
import pytest

from db.job_record import JOB_FIELDS, Job, MaskSummary
from medparse.settings import Settings
from medparse.webhooks.events import DEFAULT_JOB_EVENTS, UnknownEventType, parse_event_types
from medparse.webhooks.payload import build_payload, render_body
from medparse.webhooks.schedule import parse_retry_after, retry_delay

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def job_row(status: str = "succeeded", **extra: object) -> Job:
    return Job.from_row({
        **dict.fromkeys(JOB_FIELDS),
        "id": uuid.uuid4(), "tenant_id": uuid.uuid4(), "status": status, "prompts": ["the patient's liver"],
        "created_at": NOW, "started_at": NOW, "completed_at": NOW.replace(tzinfo=None),
        "error_code": None, "error_message": None, **extra,
    })


def mask(index: int, label: str, area_px: int, bbox: list[int]) -> MaskSummary:
    return MaskSummary(index=index, prompt="the patient's liver", label=label, area_px=area_px, bbox=bbox,
                       height=8, width=8)


def masks(n: int, label_chars: int = 12) -> list[MaskSummary]:
    return [mask(i, "l" * label_chars, 10_000_000, [10000, 10000, 20000, 20000]) for i in range(n)]


def test_a_succeeded_payload_carries_status_labels_mask_summary_and_links_but_no_prompts() -> None:
    job = job_row()
    payload = build_payload("job.succeeded", job, [mask(0, "liver", 5, [1, 2, 3, 4])], NOW)
    data = payload["data"]
    assert payload["type"] == "job.succeeded" and payload["timestamp"] == "2026-11-27T12:00:00Z"
    assert data["id"] == str(job.id) and data["status"] == "succeeded" and data["labels"] == ["liver"]
    assert data["masks"] == [{"index": 0, "label": "liver", "area_px": 5, "bbox": [1, 2, 3, 4],
                              "url": f"/v1/jobs/{job.id}/masks/0"}]
    assert data["urls"]["masks_npz"] == f"/v1/jobs/{job.id}/masks.npz"
    assert data["completed_at"] == "2026-11-27T12:00:00Z"  # naive SQLite value read as UTC
    assert b"patient" not in orjson.dumps(payload)


def test_a_failed_payload_carries_the_error_code_and_a_bounded_message() -> None:
    payload = build_payload("job.failed", job_row("failed", error_code="endpoint_timeout", error_message="x" * 5000),
                            [], NOW)
    assert payload["data"]["error"]["code"] == "endpoint_timeout"
    assert len(payload["data"]["error"]["message"]) == 500 and payload["data"]["masks"] == []


@pytest.mark.parametrize("count", [Settings().max_prompts, 64, 500])
def test_payloads_stay_under_20_kb_even_with_many_long_labels_and_absolute_links(count: int) -> None:
    payload = build_payload("job.succeeded", job_row(), masks(count, label_chars=64), NOW)
    body = render_body(payload, "https://medparse.example.org/some/long/prefix")
    assert len(body) < 20_000
    labels = orjson.loads(body)["data"]["labels"]
    assert labels == ["l" * 64] * len(labels)
    assert len(labels) == count or orjson.loads(body)["data"]["labels_truncated"]
    assert count > 16 or len(labels) == count  # the default max_prompts never truncates


def test_links_become_absolute_only_when_a_base_url_is_set() -> None:
    payload = build_payload("job.succeeded", job_row(), masks(1), NOW)
    relative = orjson.loads(render_body(payload, None))
    absolute = orjson.loads(render_body(payload, "https://api.example.org/"))
    assert relative["data"]["urls"]["get"].startswith("/v1/jobs/")
    assert absolute["data"]["urls"]["get"] == "https://api.example.org" + relative["data"]["urls"]["get"]
    assert absolute["data"]["masks"][0]["url"].startswith("https://api.example.org/v1/jobs/")
    assert render_body(payload, None) == render_body(payload, None)  # every retry sends the same bytes


def test_event_types_are_validated_deduplicated_and_ordered() -> None:
    assert parse_event_types(["job.failed", " job.started", "job.failed", ""]) == ["job.started", "job.failed"]
    assert [e.value for e in DEFAULT_JOB_EVENTS] == ["job.succeeded", "job.failed", "job.canceled"]
    with pytest.raises(UnknownEventType):
        parse_event_types(["job.exploded"])


def test_the_default_schedule_is_the_published_one() -> None:
    schedule = Settings().webhook_retry_schedule_s
    assert schedule == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert sum(schedule) == 27 * 3600 + 35 * 60 + 5  # last attempt ~27 h 35 min after the first


def test_retry_delays_follow_the_schedule_with_bounded_jitter_then_give_up() -> None:
    schedule = (5.0, 300.0, 1800.0)
    rand = random.Random(1)
    for failures, base in enumerate(schedule, start=1):
        for _ in range(50):
            delay = retry_delay(failures, schedule, jitter=0.2, rand=rand)
            assert delay is not None and base * 0.8 <= delay <= base * 1.2
    assert retry_delay(4, schedule, jitter=0.2) is None
    assert retry_delay(1, (), jitter=0.2) is None
    assert retry_delay(1, schedule, jitter=0) == 5.0


def test_retry_after_lengthens_a_wait_but_never_beyond_the_longest_step() -> None:
    schedule = (5.0, 300.0)
    assert retry_delay(1, schedule, jitter=0, retry_after_s=60) == 60
    assert retry_delay(1, schedule, jitter=0, retry_after_s=1) == 5
    assert retry_delay(1, schedule, jitter=0, retry_after_s=10**9) == 300
    assert parse_retry_after("120") == 120 and parse_retry_after("Wed, 21 Oct 2026 07:28:00 GMT") is None
    assert parse_retry_after(None) is None and parse_retry_after("-3") is None
