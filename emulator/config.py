"""Configuration of the endpoint emulator: one dataclass, validated on construction.

The runtime knobs (latency, faults, limits, size mode) may be patched while the emulator runs, through
``POST /_emulator/config``; ``apply_runtime_patch`` validates the whole patch before changing anything.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

AUTH_MODES = frozenset({"key", "aml_token", "aad_token"})
SIZE_MODES = frozenset({"lenient", "strict"})
OUTPUT_3D_VARIANTS = frozenset({"nifti_file", "image_features"})
#: Status codes a managed online endpoint is documented to return for infrastructure or model trouble.
INJECTABLE_STATUSES = frozenset({408, 424, 429, 500, 502, 503, 504})
#: ``silent``: accept the request, never answer; ``trickle``: answer one byte every hang_trickle_interval_s.
HANG_MODES = frozenset({"silent", "trickle"})


_AT_LEAST_ONE = ("request_timeout_ms", "max_concurrent_requests_per_instance", "instance_count", "max_rows")


def _default_deployments() -> dict[str, int]:
    return {"medimageparse": 100}


@dataclass
class EmulatorConfig:
    #: Bearer values accepted in key / aml_token mode, and always accepted on the admin routes.
    keys: list[str] = field(default_factory=list)
    auth_mode: str = "key"
    #: When set, the App Service managed-identity token route is served and demands this header value.
    identity_header: str | None = None
    token_ttl_s: float = 3600.0
    #: Audience (``aud``) a bearer token must carry in aad_token mode: the Azure ML data plane.
    audience: str = "https://ml.azure.com"
    #: Deployment name -> traffic weight, as in the endpoint's traffic split.
    deployments: dict[str, int] = field(default_factory=_default_deployments)
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    request_timeout_ms: int = 90000
    max_concurrent_requests_per_instance: int = 8
    instance_count: int = 1
    #: Endpoint-wide request rate above which requests get 429; 0 disables the limiter.
    rate_limit_rps: float = 500.0
    #: Status code -> probability of answering a scoring request with that status instead.
    fault_rates: dict[int, float] = field(default_factory=dict)
    #: Probability that a scoring request hangs (emulator/faults.py ``hang``): accepted, then never
    #: answered (``silent``) or answered one byte per ``hang_trickle_interval_s`` (``trickle``, which
    #: defeats a client's per-read timeout), until the client gives up.
    hang_rate: float = 0.0
    hang_mode: str = "trickle"
    hang_trickle_interval_s: float = 1.0
    size_mode: str = "lenient"
    allow_jpeg: bool = False
    max_rows: int = 256
    seed: int = 0
    #: Deployments served by the MedImageParse 3D model (emulator/score3d.py): a request pinned to one of
    #: them by the deployment header goes there, with or without a traffic weight.
    deployments_3d: list[str] = field(default_factory=lambda: ["medimageparse-3d"])
    #: The 3-D answer: ``nifti_file`` (documented) or ``image_features`` (the unmerged samples' variant).
    output_3d: str = "nifti_file"

    def __post_init__(self) -> None:
        if self.auth_mode not in AUTH_MODES:
            raise ValueError(f"auth_mode must be one of {sorted(AUTH_MODES)}, not {self.auth_mode!r}")
        if self.output_3d not in OUTPUT_3D_VARIANTS:
            raise ValueError(f"output_3d must be one of {sorted(OUTPUT_3D_VARIANTS)}, not {self.output_3d!r}")
        _check_hang(self.hang_mode, self.hang_rate, self.hang_trickle_interval_s)
        if self.size_mode not in SIZE_MODES:
            raise ValueError(f"size_mode must be one of {sorted(SIZE_MODES)}, not {self.size_mode!r}")
        if self.auth_mode == "aad_token" and not self.identity_header:
            # Without the token route nothing could ever obtain a token the emulator accepts.
            raise ValueError("aad_token mode needs identity_header so the emulator can issue tokens")
        if self.auth_mode != "aad_token" and not self.keys:
            raise ValueError(f"{self.auth_mode} mode needs at least one key")
        if any(weight < 0 for weight in self.deployments.values()):
            raise ValueError("deployment weights must be >= 0")
        _check_fault_rates(self.fault_rates)
        for name in ("token_ttl_s", "latency_ms", "latency_jitter_ms", "rate_limit_rps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in _AT_LEAST_ONE:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    @property
    def capacity(self) -> int:
        """Requests being scored at once ("on the GPU") across all instances."""
        return self.max_concurrent_requests_per_instance * self.instance_count

    @property
    def pending_limit(self) -> int:
        """In-flight requests above which Azure ML answers 429 "Too many pending requests"."""
        return 2 * self.capacity


def _check_hang(mode: str, rate: float, interval_s: float) -> None:
    if mode not in HANG_MODES:
        raise ValueError(f"hang_mode must be one of {sorted(HANG_MODES)}, not {mode!r}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError("hang_rate must be a probability in [0, 1]")
    if interval_s <= 0:
        raise ValueError("hang_trickle_interval_s must be > 0")


def _check_fault_rates(fault_rates: dict[int, float]) -> None:
    unknown = set(fault_rates) - INJECTABLE_STATUSES
    if unknown:
        raise ValueError(f"cannot inject status {sorted(unknown)}; choose from {sorted(INJECTABLE_STATUSES)}")
    if any(not 0.0 <= rate <= 1.0 for rate in fault_rates.values()):
        raise ValueError("fault rates must be probabilities in [0, 1]")
    if sum(fault_rates.values()) > 1.0 + 1e-9:
        raise ValueError("fault rates must add up to at most 1")


_FLOAT_KNOBS = frozenset({
    "latency_ms", "latency_jitter_ms", "rate_limit_rps", "token_ttl_s", "hang_rate", "hang_trickle_interval_s",
})
_INT_KNOBS = frozenset({"request_timeout_ms", "max_concurrent_requests_per_instance", "instance_count"})
RUNTIME_KNOBS = _FLOAT_KNOBS | _INT_KNOBS | {"fault_rates", "size_mode", "hang_mode"}


def apply_runtime_patch(config: EmulatorConfig, patch: dict[str, Any]) -> None:
    """Change runtime knobs of a live config in place, all or nothing.

    Raises:
        ValueError: unknown knob, wrong type or invalid value; the config is then left unchanged.
    """
    unknown = set(patch) - RUNTIME_KNOBS
    if unknown:
        raise ValueError(f"not a runtime knob: {sorted(unknown)}; allowed: {sorted(RUNTIME_KNOBS)}")
    coerced = {name: _coerce_knob(name, value) for name, value in patch.items()}
    dataclasses.replace(config, **coerced)  # runs __post_init__ validation on the would-be config
    for name, value in coerced.items():
        setattr(config, name, value)


def _coerce_knob(name: str, value: Any) -> Any:
    # bool is an int subclass; true/false is never a sensible latency or count.
    if name in _FLOAT_KNOBS and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if name in _INT_KNOBS and isinstance(value, int) and not isinstance(value, bool):
        return value
    if name in ("size_mode", "hang_mode") and isinstance(value, str):
        return value
    if name == "fault_rates" and isinstance(value, dict):
        try:
            return {int(code): float(rate) for code, rate in value.items()}
        except (TypeError, ValueError) as exc:
            raise ValueError("fault_rates must map status codes to probabilities") from exc
    raise ValueError(f"invalid value for {name}: {value!r}")
