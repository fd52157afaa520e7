"""Mutable per-app state of the emulator and the typed keys it is stored under.

One ``EmulatorState`` per application, created by ``create_emulator_app``; nothing lives at module level.
"""

from __future__ import annotations

import random
import secrets
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from emulator.config import EmulatorConfig
from emulator.faults import GpuSlots, RateLimiter
from emulator.tokens import TokenIssuer

#: Client request ids kept for /_emulator/stats; the count keeps going past it.
MAX_REMEMBERED_CLIENT_REQUEST_IDS = 10_000


@dataclass
class Stats:
    status_counts: Counter[int] = field(default_factory=Counter)
    deployment_counts: Counter[str] = field(default_factory=Counter)
    rows_scored: int = 0
    prompts_scored: int = 0
    max_in_flight: int = 0
    client_request_id_count: int = 0
    client_request_ids: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_REMEMBERED_CLIENT_REQUEST_IDS))

    def to_json(self, in_flight: int, on_gpu: int) -> dict[str, Any]:
        return {
            "emulator": True,
            "requests_total": sum(self.status_counts.values()),
            "status_counts": {str(status): n for status, n in sorted(self.status_counts.items())},
            "deployment_counts": dict(self.deployment_counts),
            "rows_scored": self.rows_scored,
            "prompts_scored": self.prompts_scored,
            "in_flight": in_flight,
            "on_gpu": on_gpu,
            "max_in_flight": self.max_in_flight,
            "client_request_id_count": self.client_request_id_count,
            "client_request_ids": list(self.client_request_ids),
        }


class EmulatorState:
    def __init__(self, config: EmulatorConfig) -> None:
        # Seeded so latency jitter, traffic split and injected faults repeat for the same request sequence.
        self.rng = random.Random(config.seed)
        # A fresh signing secret per app: tokens from one emulator run are worthless in another.
        self.tokens = TokenIssuer(secrets.token_bytes(32))
        self.rate_limiter = RateLimiter()
        self.gpu = GpuSlots()
        self.in_flight = 0
        self.stats = Stats()

    def enter(self) -> None:
        self.in_flight += 1
        self.stats.max_in_flight = max(self.stats.max_in_flight, self.in_flight)

    def leave(self) -> None:
        self.in_flight -= 1

    def reset_stats(self) -> None:
        self.stats = Stats(max_in_flight=self.in_flight)

    def record_client_request_id(self, value: str) -> None:
        self.stats.client_request_id_count += 1
        self.stats.client_request_ids.append(value)


CONFIG = web.AppKey("emulator_config", EmulatorConfig)
STATE = web.AppKey("emulator_state", EmulatorState)
#: Threads that decode and segment images, so the event loop keeps serving while a request is scored.
EXECUTOR = web.AppKey("emulator_executor", ThreadPoolExecutor)
