"""The job event types a webhook can receive, and which job status raises which event."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class EventType(StrEnum):
    #: a worker claimed the job (first claim only: a retried attempt does not start it again)
    started = "job.started"
    succeeded = "job.succeeded"
    failed = "job.failed"
    canceled = "job.canceled"


ALL_EVENTS: tuple[EventType, ...] = tuple(EventType)
#: What a per-job ``webhook_url`` receives when ``webhook_events`` is not given.
DEFAULT_JOB_EVENTS: tuple[EventType, ...] = (EventType.succeeded, EventType.failed, EventType.canceled)



class UnknownEventType(ValueError):
    def __init__(self, value: str) -> None:
        super().__init__(f"unknown event type {value!r} (expected {', '.join(e.value for e in EventType)})")


def parse_event_types(values: Iterable[str]) -> list[str]:
    """Validated, de-duplicated event type names in their canonical order.

    Raises:
        UnknownEventType: for a name that is not an ``EventType``.
    """
    chosen: set[EventType] = set()
    for raw in values:
        value = raw.strip()
        if not value:
            continue
        try:
            chosen.add(EventType(value))
        except ValueError:
            raise UnknownEventType(value) from None
    return [e.value for e in ALL_EVENTS if e in chosen]
