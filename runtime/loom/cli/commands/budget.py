"""``loom budget``: what a RouterPolicy's budgets and shared limits have used in their current windows.

The policy comes from files (``--config``, as ``loom router`` reads them); the use from the router's
Key-Value buckets on NATS, which every router replica shares. Against the bus of a ``loom up`` the
command connects as that run's admin (found in its run dir).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from loom.api.loader import LoadError
from loom.bus import Bus
from loom.cli.common import (
    add_local_credentials_option,
    add_runtime_options,
    client_nats_settings,
    explain_refusal,
)
from loom.local.credentials import LocalCredentialsError
from loom.logs import setup_logging
from loom.router.routing import load_router_config
from loom.router.usage import Use, read_usage
from loom.settings import NatsSettings

NAME = "budget"
HELP = "Show budget and shared limit use of a RouterPolicy in the current windows."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", nargs="+", required=True, metavar="PATH", help="RouterPolicy file(s) or directories"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    add_runtime_options(parser, metrics=False)
    add_local_credentials_option(parser)


def _line(u: Use) -> str:
    if u.used is None:
        used, pct = "in router memory", ""
    else:
        used, pct = f"{u.used:g}", f"{100 * (u.ratio or 0):5.1f}%"
    return f"{u.scope:<24} {u.what:<14} {u.window:<18} {used:>16} / {u.limit:<12g} {pct}"


async def _main(args: argparse.Namespace, settings: NatsSettings) -> int:
    policy = load_router_config(args.config).policy
    bus = await Bus.connect(settings, connect_timeout=30, ensure_streams=False)
    try:
        limits, budgets = await read_usage(bus, policy, time.time())
    finally:
        await bus.close()
    if args.json:
        print(
            json.dumps({"budgets": [u.as_dict() for u in budgets], "limits": [u.as_dict() for u in limits]})
        )
        return 0
    print(f"budgets ({policy.budgets.time_zone}, over budget: {policy.budgets.on_exhausted})")
    for u in budgets or []:
        print("  " + _line(u))
    if not budgets:
        print("  none")
    print("shared limits")
    for u in limits:
        print("  " + _line(u))
    if not limits:
        print("  none")
    return 0


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.log_json)
    from loom.bus import BusAuthError, BusError

    try:
        settings = client_nats_settings(args, "loom-budget", tenant=None)
        return asyncio.run(_main(args, settings))
    except (LoadError, LocalCredentialsError) as exc:
        print(f"loom budget: {exc}", file=sys.stderr)
        return 2
    except BusError as exc:
        print(f"loom budget: {exc}", file=sys.stderr)
        if isinstance(exc, BusAuthError):
            explain_refusal(args, settings, "loom budget")
        return 1
