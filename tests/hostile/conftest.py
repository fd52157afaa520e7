"""Fixtures of the hostile tests: ``make_stack(**env)`` starts a production-shape stack (see stack.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from medparse.settings import Settings
from tests.support.stack import Stack, running_stack


@pytest.fixture
def make_stack(pg_settings: Settings, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """``make_stack(**env)``: the stack with extra ``MEDPARSE_*`` settings (strings); one per test."""
    with ExitStack() as stacks:

        def make(**env: str) -> Stack:
            return stacks.enter_context(running_stack(pg_settings, tmp_path, **env))

        yield make
