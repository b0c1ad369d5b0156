"""``loom budget``: what a RouterPolicy's budgets and shared limits have used in their current windows.

The policy comes from files (``--config``, as ``loom router`` reads them); the use from the router's
Key-Value buckets on NATS, which every router replica shares. Against the bus of a ``loom up`` the
command connects as that run's admin (found in its run dir).
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial

from loom.api.loader import LoadError
from loom.bus import Bus
from loom.cli.common import add_local_credentials_option, add_runtime_options, fail, run_client
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
    heading = f"budgets ({policy.budgets.time_zone}, over budget: {policy.budgets.on_exhausted})"
    for title, uses in ((heading, budgets), ("shared limits", limits)):
        print(title)
        for u in uses:
            print("  " + _line(u))
        if not uses:
            print("  none")
    return 0


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.log_json)
    try:  # the policy is loaded in _main, once the credentials are found
        return run_client(args, "loom budget", partial(_main, args))
    except LoadError as exc:
        return fail("loom budget", exc)
