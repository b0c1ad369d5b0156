"""``loom operator``: run the Kopf operator in-process, with /metrics and /healthz on one port."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Any

from loom_operator.settings import Settings

NAME = "operator"
HELP = "Run the Loom operator: reconcile Workers, Pipelines, RouterPolicies and Schedules."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)"
    )
    parser.add_argument(
        "--namespace",
        action="append",
        dest="namespaces",
        help="watch only this namespace (repeatable); env LOOM_WATCH_NAMESPACES; default cluster-wide",
    )
    parser.add_argument("--nats-url", help="NATS URL given to pods; env LOOM_NATS_URL")
    parser.add_argument(
        "--nats-monitor-url", help="NATS monitoring URL for the scaler; env LOOM_NATS_MONITOR_URL"
    )
    parser.add_argument("--image", help="image of rendered pods; env LOOM_IMAGE")
    parser.add_argument("--keda", choices=("auto", "on", "off"), help="KEDA ScaledObjects; env LOOM_KEDA")
    parser.add_argument(
        "--scaler-interval", type=float, help="seconds between scaler passes; env LOOM_SCALER_INTERVAL"
    )
    parser.add_argument("--resync-seconds", type=float, help="full re-apply period; env LOOM_RESYNC_SECONDS")
    parser.add_argument(
        "--metrics-port", type=int, help="/metrics and /healthz port (0 = off); env LOOM_METRICS_PORT"
    )
    parser.add_argument(
        "--peering",
        help="Kopf peering name for a hot standby: the highest-priority replica works, the others wait; "
        "env LOOM_PEERING; default standalone",
    )
    parser.add_argument(
        "--peering-lifetime",
        type=int,
        help="seconds a replica's keep-alive counts (how soon the standby takes over); "
        "env LOOM_PEERING_LIFETIME; default 60",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("LOOM_LOG_LEVEL", "INFO"),
        help="env LOOM_LOG_LEVEL; default INFO",
    )
    parser.add_argument(
        "--log-json",
        action="store_true",
        default=os.environ.get("LOOM_LOG_JSON", "") in ("1", "true"),
        help="one JSON object per line, the resource under 'object'; env LOOM_LOG_JSON",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Environment settings with the given flags winning."""
    return Settings.from_env().with_overrides(
        kubeconfig=args.kubeconfig,
        watch_namespaces=tuple(sorted(set(args.namespaces))) if args.namespaces else None,
        nats_url=args.nats_url,
        nats_monitor_url=args.nats_monitor_url.rstrip("/") if args.nats_monitor_url else None,
        image=args.image,
        keda=args.keda,
        scaler_interval=args.scaler_interval,
        resync_seconds=args.resync_seconds,
        metrics_port=args.metrics_port,
        peering=args.peering,
        peering_lifetime=args.peering_lifetime,
    )


async def _main(args: argparse.Namespace) -> int:
    from loom_operator import handlers, metrics

    settings = settings_from_args(args)
    stop = asyncio.Event()
    ready = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = None
    if settings.metrics_port > 0:
        runner = await metrics.start_server(settings.metrics_port, ready.is_set)
    try:
        await handlers.run(settings, stop=stop, ready=ready)
    finally:
        if runner is not None:
            await runner.cleanup()
    return 0


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str, json_logs: bool) -> None:
    """Kopf's formatters: per-resource lines carry ``[namespace/name]`` (text) or ``object`` (JSON)."""
    import kopf

    log_format: Any = kopf.LogFormat.JSON if json_logs else LOG_FORMAT
    kopf.configure(log_format=log_format, log_prefix=True)
    logging.getLogger().setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per API call is noise


def run(args: argparse.Namespace) -> int:
    configure_logging(str(args.log_level), bool(args.log_json))
    try:
        settings_from_args(args)  # a bad setting stops here with its message, not a traceback
    except ValueError as exc:
        print(f"loom operator: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_main(args))
