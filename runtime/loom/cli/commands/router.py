"""``loom router``: route tasks from ``loom.tasks.incoming`` to workers, under the RouterPolicy's limits."""

from __future__ import annotations

import argparse
import os
import sys

from loom.api.loader import LoadError
from loom.api.router_policy import RouterConfig
from loom.bus import Bus
from loom.cli.commands._serve import Ready, RoleRun, configure_logging, serve_on_bus
from loom.cli.common import add_runtime_options, fail

NAME = "router"
HELP = "Run a router replica (tier overrides, rate limits, dead letters)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument(
        "--config",
        nargs="+",
        action="extend",
        default=None,
        metavar="FILE",
        help="RouterConfig (router.yaml) or RouterPolicy/Worker files or directories; env LOOM_ROUTER_CONFIG "
        "(comma-separated). Without any, every worker type is routed on the default tiers, unlimited.",
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=int(env("LOOM_ROUTER_MAX_IN_FLIGHT", "4096")),
        help="messages held at once, waiting ones included; env LOOM_ROUTER_MAX_IN_FLIGHT",
    )
    parser.add_argument("--batch", type=int, default=256, help="pull batch size")
    parser.add_argument(
        "--ack-wait", type=float, default=30.0, help="seconds before an unacked task is redelivered"
    )
    parser.add_argument(
        "--inflight-lease-seconds",
        type=_positive_seconds,
        default=env("LOOM_ROUTER_INFLIGHT_LEASE_SECONDS"),  # a string default goes through ``type`` too
        metavar="SECONDS",
        help="release a dispatch's concurrency and token hold when no result came back by then; "
        "default: the worker's (timeout + ack grace) x max deliveries + a grace when the catalog knows "
        "the worker, else 900; env LOOM_ROUTER_INFLIGHT_LEASE_SECONDS",
    )
    parser.add_argument(
        "--no-worker-wait",
        type=float,
        default=float(env("LOOM_ROUTER_NO_WORKER_WAIT", "300")),
        metavar="SECONDS",
        help="dead-letter (reason no_worker) a routed task after it waited this long for a worker type and "
        "tier that no worker has ever consumed; 0 waits forever (default 300); "
        "env LOOM_ROUTER_NO_WORKER_WAIT",
    )
    parser.add_argument(
        "--limits",
        choices=("auto", "local", "shared"),
        default=env("LOOM_ROUTER_LIMITS", "auto"),
        help="where rate limits are kept: shared through NATS (exact across replicas, survives a replica's "
        "death), local to this process (each replica limit / replicas), or auto: local with one replica, "
        "shared with more (default); env LOOM_ROUTER_LIMITS",
    )
    parser.add_argument(
        "--limit-window-seconds",
        type=_positive_seconds,
        default=env("LOOM_ROUTER_LIMIT_WINDOW_SECONDS", "60"),
        metavar="SECONDS",
        help="window of the shared per-minute limits, aligned to wall time; a limit of N per minute allows "
        "N x SECONDS / 60 per window (default 60); env LOOM_ROUTER_LIMIT_WINDOW_SECONDS",
    )
    parser.add_argument(
        "--limit-lease-seconds",
        type=_positive_seconds,
        default=env("LOOM_ROUTER_LIMIT_LEASE_SECONDS", "15"),
        metavar="SECONDS",
        help="a replica's shared in-flight slots come back this long after it stops renewing them (it died); "
        "default 15; env LOOM_ROUTER_LIMIT_LEASE_SECONDS",
    )
    add_runtime_options(parser)


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    configure_logging(args)
    paths = args.config or [p for p in os.environ.get("LOOM_ROUTER_CONFIG", "").split(",") if p]
    from loom.router.routing import load_router_config

    try:
        config = load_router_config(paths) if paths else RouterConfig()
    except LoadError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    from loom.router.service import RouterOptions, RouterService, build_limiter

    options = RouterOptions(
        max_in_flight=args.max_in_flight,
        batch=args.batch,
        ack_wait=args.ack_wait,
        dispatch_lease=args.inflight_lease_seconds,
        no_worker_wait=args.no_worker_wait,
        no_worker_interval=min(5.0, max(0.2, args.no_worker_wait / 4)) if args.no_worker_wait > 0 else 5.0,
        limits=args.limits,
        limit_window=args.limit_window_seconds,
        limit_lease=args.limit_lease_seconds,
    )
    try:
        build_limiter(config.policy, options)
    except ValueError as exc:
        return fail("router", exc)

    def build(bus: Bus) -> tuple[RoleRun, Ready]:
        service = RouterService(bus, config, options)
        return service.run, lambda: service.ready

    return serve_on_bus(args, "router", build)
