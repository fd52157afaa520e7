"""When to try a failed delivery again: a published schedule with jitter, and Retry-After."""

from __future__ import annotations

import random
from collections.abc import Sequence


def retry_delay(
    failures: int,
    schedule: Sequence[float],
    *,
    jitter: float,
    retry_after_s: float | None = None,
    rand: random.Random | None = None,
) -> float | None:
    """Seconds until the next attempt after ``failures`` failed attempts in a row; None = give up.

    The first retry waits ``schedule[0]``, the k-th ``schedule[k-1]``, each scaled by a random
    factor in ``[1 - jitter, 1 + jitter]`` so receivers that failed together do not get every
    retry at the same instant. A receiver's ``Retry-After`` can lengthen a wait up to the longest
    step of the schedule (never beyond: a huge value must not silently park the delivery).
    """
    if failures < 1 or failures > len(schedule):
        return None
    base = float(schedule[failures - 1])
    factor = 1.0 + (rand or random).uniform(-jitter, jitter) if jitter > 0 else 1.0
    delay = base * factor
    if retry_after_s is not None and retry_after_s > delay:
        delay = min(retry_after_s, max(schedule))
    return max(0.0, delay)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header in delta-seconds form (HTTP dates are ignored)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
