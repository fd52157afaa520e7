"""The Job record: one shape of a job, the same as the table's and as what a new job's INSERT stores."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from db import jobs as repo
from db.job_record import JOB_FIELDS, MASK_SUMMARY_FIELDS, Job
from db.models import Job as JobModel
from db.status import JobStatus

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def _new(input_meta: dict[str, object] | None = None) -> repo.NewJob:
    return repo.NewJob(
        id=uuid.uuid4(), tenant_id=uuid.uuid4(), prompts=["liver", "kidney"], options={"modality": "ct"},
        input_format="png", input_width=3, input_height=2, image=b"0123456789", now=NOW, priority=5,
        input_meta=input_meta,
    )


def test_the_record_has_every_column_of_the_table_in_table_order() -> None:
    assert JOB_FIELDS == tuple(c.name for c in JobModel.__table__.c)
    assert MASK_SUMMARY_FIELDS == tuple(c.key for c in repo.MASK_SUMMARY_COLUMNS)


def test_a_new_job_is_what_its_insert_stores() -> None:
    new = _new()
    job = new.as_job()
    stored, _ = repo.insert_job_params(new)
    assert {name: job.as_row()[name] for name in stored} == stored
    assert job.status is JobStatus.queued and not job.is_terminal and not job.is_volume
    assert Job.from_row({**job.as_row(), "webhook_url": None}) == job  # extra columns (the outbox's) are ignored


def test_volume_and_terminal_jobs_are_told_apart() -> None:
    volume = _new({"kind": "volume", "shape": [4, 4, 3]}).as_job()
    image = _new({"kind": "image", "frames": 2}).as_job()
    assert volume.is_volume and not image.is_volume
    for status in JobStatus:
        job = Job.from_row({**image.as_row(), "status": status.value})
        assert job.is_terminal == (status in (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled))
        assert job.succeeded == (status is JobStatus.succeeded)
