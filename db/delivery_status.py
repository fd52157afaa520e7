"""The webhook delivery state machine: one table of allowed transitions, nothing else.

Pure module, like ``db.status``: no SQLAlchemy, aiohttp or Celery imports. Every status change of a
delivery is checked here and then written as a compare-and-set UPDATE (``db.webhooks``): on
``status``, and for the worker that claimed it, on the attempt number its claim made.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class DeliveryStatus(StrEnum):
    #: waiting in Postgres until ``next_attempt_at``: a new event, a retry, a postponed claim or a replay
    pending = "pending"
    #: claimed by a webhook worker for one attempt, under a lease (``claimed_until``)
    sending = "sending"
    #: the receiver answered 2xx
    succeeded = "succeeded"
    #: no retries left, or the target refused (SSRF policy, disabled) or is gone (410)
    failed = "failed"


TRANSITIONS: Mapping[DeliveryStatus, frozenset[DeliveryStatus]] = {
    # pending -> failed: the target answered 410 to another delivery, so this one is never sent.
    # pending -> pending: a replay (due now, with a fresh retry schedule).
    DeliveryStatus.pending: frozenset({DeliveryStatus.sending, DeliveryStatus.failed, DeliveryStatus.pending}),
    # sending -> sending: the lease ran out (the sender died) and another worker claims it again.
    # sending -> pending: a retry is scheduled, or no sending slot was free (the claim is undone).
    DeliveryStatus.sending: frozenset(
        {DeliveryStatus.sending, DeliveryStatus.pending, DeliveryStatus.succeeded, DeliveryStatus.failed}
    ),
    # Only a replay by the tenant moves a completed delivery again.
    DeliveryStatus.succeeded: frozenset({DeliveryStatus.pending}),
    DeliveryStatus.failed: frozenset({DeliveryStatus.pending}),
}

#: What a new delivery (an outbox row) starts as.
INITIAL = DeliveryStatus.pending
#: Where a claim may take a delivery from: due ones, and those whose sender's lease ran out.
CLAIMABLE: frozenset[DeliveryStatus] = frozenset(
    s for s, targets in TRANSITIONS.items() if DeliveryStatus.sending in targets
)
#: Ended by an attempt's result (``completed_at`` set); only a replay moves them again.
COMPLETED: frozenset[DeliveryStatus] = frozenset(
    s for s, targets in TRANSITIONS.items() if targets == {DeliveryStatus.pending}
)
#: What a replay may send again: anything but an attempt in flight (the claim's owner writes its result).
REPLAYABLE: frozenset[DeliveryStatus] = frozenset(
    s for s, targets in TRANSITIONS.items() if DeliveryStatus.pending in targets and s is not DeliveryStatus.sending
)


class InvalidDeliveryTransition(Exception):
    def __init__(self, current: DeliveryStatus, target: DeliveryStatus) -> None:
        super().__init__(f"a {current} delivery cannot become {target}")
        self.current = current
        self.target = target


def check_transition(current: DeliveryStatus, target: DeliveryStatus) -> None:
    """Raise ``InvalidDeliveryTransition`` unless ``current -> target`` is in the table."""
    if target not in TRANSITIONS[current]:
        raise InvalidDeliveryTransition(current, target)


def is_completed(status: DeliveryStatus) -> bool:
    return status in COMPLETED
