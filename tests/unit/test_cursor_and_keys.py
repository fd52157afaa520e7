import uuid
from datetime import UTC, datetime

from sqlalchemy import insert

from db import jobs as repo
from db.engine import make_sync_engine
from db.job_record import Job
from db.models import Job as JobModel
from db.tenants import hash_secret, new_api_key, parse_api_key, secret_matches
from gateway.http.cursors import decode_cursor, encode_cursor
from gateway.jobs.services import to_public
from medparse.settings import Settings
from tests.support.factories import new_tenant


def _row(created: datetime) -> Job:
    return Job.from_row({
        "id": uuid.uuid4(), "tenant_id": uuid.uuid4(), "status": "queued", "prompts": ["liver"], "options": {},
        "created_at": created, "updated_at": created, "dispatched_at": None,
        "started_at": None, "completed_at": None, "attempts": 0, "priority": 0, "prompt_count": 1,
        "endpoint_calls": 0, "endpoint_seconds": 0.0, "lease_expires_at": None, "error_code": None,
        "error_message": None,
        "input_width": 3, "input_height": 2, "input_format": "png", "input_bytes": 10,
        "result_width": None, "result_height": None, "result_meta": None, "input_meta": None, "progress": None,
    })


def test_cursor_round_trips_created_at_and_id() -> None:
    job = to_public(_row(datetime(2026, 11, 27, 12, 0, 0, 123456, tzinfo=UTC)), None)
    assert decode_cursor(encode_cursor(job.created_at, job.id)) == (job.created_at, job.id)


def test_naive_sqlite_timestamps_are_reported_as_utc(embedded_settings: Settings) -> None:
    # SQLite (the embedded default) stores a naive wall-clock time; the database layer reads it back
    # as UTC (db/types.py), so the job read from it, not a patch in to_public, carries the zone.
    stored = _row(datetime(2026, 11, 27, 12, 0, 0))
    tenant_id, _ = new_tenant(embedded_settings)
    engine = make_sync_engine(embedded_settings)
    with engine.begin() as conn:
        conn.execute(insert(JobModel).values({**stored.as_row(), "tenant_id": tenant_id}))
        row = conn.execute(repo.SELECT_JOB, {"job_id": stored.id, "tenant_id": tenant_id}).mappings().one()
    engine.dispose()
    job = to_public(Job.from_row(row), None)
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
