"""Command-line options of ``medparse emulator`` and the function that runs the server from them.

Secrets need not appear on the command line (where ``ps`` shows them): keys may come from
``MEDPARSE_EMULATOR_KEY`` (one key, or several separated by commas) and the identity header from
``MEDPARSE_EMULATOR_IDENTITY_HEADER``.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping

from aiohttp import web

from emulator.app import create_emulator_app
from emulator.config import AUTH_MODES, OUTPUT_3D_VARIANTS, SIZE_MODES, EmulatorConfig

KEY_ENV = "MEDPARSE_EMULATOR_KEY"
IDENTITY_HEADER_ENV = "MEDPARSE_EMULATOR_IDENTITY_HEADER"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001, help="port (default 5001, as the inference server)")
    parser.add_argument("--key", action="append", default=[], help=f"accepted bearer key, repeatable (or ${KEY_ENV})")
    parser.add_argument("--auth-mode", choices=sorted(AUTH_MODES), default="key")
    parser.add_argument("--identity-header", help=f"serve the managed-identity token route (or ${IDENTITY_HEADER_ENV})")
    parser.add_argument("--token-ttl", type=float, default=3600.0, help="lifetime of issued tokens, s")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--latency-jitter-ms", type=float, default=0.0)
    parser.add_argument("--request-timeout-ms", type=int, default=90000)
    parser.add_argument("--max-concurrent", type=int, default=8, help="max_concurrent_requests_per_instance")
    parser.add_argument("--instances", type=int, default=1, help="instance_count")
    parser.add_argument("--rate-limit-rps", type=float, default=500.0, help="0 disables the limiter")
    parser.add_argument("--fault", default="", help="injected fault rates, e.g. 500=0.05,429=0.05")
    parser.add_argument("--size-mode", choices=sorted(SIZE_MODES), default="lenient")
    parser.add_argument("--allow-jpeg", action="store_true")
    parser.add_argument(
        "--deployment",
        action="append",
        default=[],
        help="NAME=WEIGHT, repeatable (default medimageparse=100)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--deployment-3d", action="append", default=[],
        help="deployment served by the 3-D model (NIfTI in, labels out), repeatable (default medimageparse-3d)",
    )
    parser.add_argument("--output-3d", choices=sorted(OUTPUT_3D_VARIANTS), default="nifti_file",
                        help="3-D answer: the documented nifti_file, or the samples' image_features variant")


def _pairs(spec: str, what: str) -> list[tuple[str, str]]:
    pairs = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"{what} must look like NAME=VALUE, got {item!r}")
        pairs.append((name.strip(), value.strip()))
    return pairs


def parse_fault_rates(spec: str) -> dict[int, float]:
    """``"500=0.05,429=0.05"`` -> ``{500: 0.05, 429: 0.05}``."""
    return {int(status): float(rate) for status, rate in _pairs(spec, "--fault")}


def parse_deployments(specs: list[str]) -> dict[str, int]:
    """``["blue=90", "green=10"]`` -> ``{"blue": 90, "green": 10}``; none given -> the default."""
    if not specs:
        return {"medimageparse": 100}
    return {name: int(weight) for spec in specs for name, weight in _pairs(spec, "--deployment")}


def config_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> EmulatorConfig:
    """Build the config; environment values fill in keys and the identity header.

    Raises:
        ValueError: an option is malformed or the combination is invalid.
    """
    env = os.environ if environ is None else environ
    keys = list(args.key) + [k.strip() for k in env.get(KEY_ENV, "").split(",") if k.strip()]
    return EmulatorConfig(
        keys=keys,
        auth_mode=args.auth_mode,
        identity_header=args.identity_header or env.get(IDENTITY_HEADER_ENV) or None,
        token_ttl_s=args.token_ttl,
        deployments=parse_deployments(args.deployment),
        latency_ms=args.latency_ms,
        latency_jitter_ms=args.latency_jitter_ms,
        request_timeout_ms=args.request_timeout_ms,
        max_concurrent_requests_per_instance=args.max_concurrent,
        instance_count=args.instances,
        rate_limit_rps=args.rate_limit_rps,
        fault_rates=parse_fault_rates(args.fault),
        size_mode=args.size_mode,
        allow_jpeg=args.allow_jpeg,
        seed=args.seed,
        deployments_3d=list(args.deployment_3d) or ["medimageparse-3d"],
        output_3d=args.output_3d,
    )


def run_from_args(args: argparse.Namespace) -> None:
    """Run the emulator in the foreground until interrupted (Ctrl-C / SIGTERM)."""
    try:
        config = config_from_args(args)
    except ValueError as exc:
        raise SystemExit(f"medparse emulator: {exc}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger(__name__).info("emulator listening on http://%s:%d", args.host, args.port)
    # No access log: it costs CPU per request, and request lines are all the same here anyway.
    web.run_app(create_emulator_app(config), host=args.host, port=args.port, access_log=None, print=None)
