"""Celery tasks: adapters that take a job id, and hand the work to lifecycle + pipeline.

Time limits that hold whatever the pool type (the default ``threads`` pool enforces none of
Celery's): every endpoint request of a job ends by the job's soft time limit (a deadline on the
HTTP streams, medparse/http_deadline.py) and the job fails ``timeout``; decodes have their own
deadline in the decode pool; and anything else that hangs stops being renewed by the heartbeat at
the hard time limit, so the sweeper takes the job back even though a thread is stuck.
"""

from __future__ import annotations

import logging
import time
import uuid

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

from medparse import http_deadline
from medparse.endpoint.errors import EndpointError
from medparse.imaging import ImageRejected
from medparse.queue import SEGMENT_TASK
from workers import lifecycle
from workers.context import ContextHolder, WorkerContext
from workers.volume_pipeline import segment_job

log = logging.getLogger(__name__)


def run_job(ctx: WorkerContext, job_id_text: str) -> str:
    """One delivery of ``segmentation.run``. Returns what happened, for logs and tests."""
    try:
        job_id = uuid.UUID(job_id_text)
    except ValueError:
        log.error("dropping message with malformed job id")
        return "malformed"
    settings = ctx.settings
    claimed = lifecycle.claim(ctx.engine, job_id, settings.job_lease_s)
    if claimed is None:
        # Redelivery of a job that is running elsewhere, finished, canceled or deleted: no-op.
        log.info("job %s not claimable; skipping duplicate delivery", job_id)
        return "skipped"
    # No notification for running: Prefer: wait only returns on a terminal state, and a wake here
    # costs every waiter a tenant-scoped re-read while this worker competes for the same CPUs.
    outcome = "failed"
    ended: lifecycle.Ended | None = None
    started = time.monotonic()
    keeper = lifecycle.LeaseKeeper(
        ctx.engine, claimed, settings.job_lease_s, settings.job_heartbeat_s,
        renew_for_s=settings.task_time_limit_s,
    )
    with keeper, http_deadline.deadline_at(started + settings.task_soft_time_limit_s):
        try:
            # the input is read in a decode process (workers/decode_steps.py), then sent to the endpoint
            result = segment_job(ctx, claimed, job_id_text)
            ended = lifecycle.finish(
                ctx.engine, claimed, result, delete_input=settings.retention_delete_input_on_success
            )
            outcome = "succeeded" if ended else "discarded"
        except ImageRejected as exc:
            ended = lifecycle.fail(ctx.engine, claimed, exc.code, exc.message)
        except EndpointError as exc:
            log.warning("job %s attempt %d: endpoint error %s", job_id, claimed.attempt, exc.code)
            ended = lifecycle.fail(
                ctx.engine, claimed, exc.code, exc.message,
                endpoint_calls=exc.attempts, endpoint_seconds=time.monotonic() - started,
            )
        except SoftTimeLimitExceeded:
            ended = lifecycle.fail(ctx.engine, claimed, "timeout", "the job exceeded its processing time limit")
        except Exception:
            log.exception("job %s attempt %d: unexpected error", job_id, claimed.attempt)
            message = "the worker hit an unexpected error; resubmit the job"
            ended = lifecycle.fail(ctx.engine, claimed, "internal_error", message)
    # With the committed job inside, a waiting request answers without reading it back.
    ctx.notifier.job_changed(job_id_text, ended.snapshot if ended else None)
    ctx.wake_dispatcher()  # this worker slot is free: the next fair batch may go out
    log.info("job %s attempt %d: %s", job_id, claimed.attempt, outcome)
    return outcome


def register_tasks(app: Celery, holder: ContextHolder) -> None:
    @app.task(name=SEGMENT_TASK, acks_late=True, ignore_result=True)
    def run_segmentation(job_id: str) -> str:
        return run_job(holder.get(), job_id)
