"""The delay before the ``serve`` parent replaces a gateway process that died (runtime/supervisor.py)."""

from __future__ import annotations

from runtime.supervisor import Backoff


def test_deaths_in_a_row_double_the_delay_up_to_the_max() -> None:
    backoff = Backoff(min_s=0.5, max_s=5.0, reset_after_s=60.0)
    assert [backoff.after_exit(uptime_s=1.0) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_a_process_that_stayed_up_long_enough_starts_over_at_the_min() -> None:
    backoff = Backoff(min_s=0.5, max_s=5.0, reset_after_s=60.0)
    for _ in range(4):
        backoff.after_exit(uptime_s=0.1)
    assert backoff.after_exit(uptime_s=60.0) == 0.5
    assert backoff.after_exit(uptime_s=0.1) == 1.0


def test_a_min_above_the_max_is_capped() -> None:
    assert Backoff(min_s=10.0, max_s=2.0, reset_after_s=60.0).after_exit(uptime_s=0.0) == 2.0
