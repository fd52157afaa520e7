import uuid
from datetime import UTC, datetime

from db.tenants import hash_secret, new_api_key, parse_api_key, secret_matches
from gateway.http.cursors import decode_cursor, encode_cursor
from gateway.jobs.services import to_public


def _row(created: datetime) -> dict[str, object]:
    return {
        "id": uuid.uuid4(), "status": "queued", "prompts": ["liver"], "options": {}, "created_at": created,
        "started_at": None, "completed_at": None, "attempts": 0, "priority": 0, "error_code": None,
        "error_message": None,
        "input_width": 3, "input_height": 2, "input_format": "png", "input_bytes": 10,
        "result_width": None, "result_height": None, "result_meta": None,
    }


def test_cursor_round_trips_created_at_and_id() -> None:
    job = to_public(_row(datetime(2026, 11, 27, 12, 0, 0, 123456, tzinfo=UTC)), None)
    assert decode_cursor(encode_cursor(job.created_at, job.id)) == (job.created_at, job.id)


def test_naive_sqlite_timestamps_are_reported_as_utc() -> None:
    job = to_public(_row(datetime(2026, 11, 27, 12, 0, 0)), None)
    assert job.created_at.tzinfo is not None


def test_api_keys_are_stored_as_hashes_and_parse_back() -> None:
    issued, stored = new_api_key()
    parsed = parse_api_key(issued.plaintext)
    assert parsed is not None and parsed.key_id == issued.key_id
    assert stored == hash_secret(parsed.secret) and parsed.secret not in stored
    assert secret_matches(parsed.secret, stored)
    assert not secret_matches(parsed.secret + "0", stored)


def test_malformed_keys_do_not_parse() -> None:
    for value in ["", "mpk_", "mpk_abc", "sk_abc_def", "mpk__secret"]:
        assert parse_api_key(value) is None
