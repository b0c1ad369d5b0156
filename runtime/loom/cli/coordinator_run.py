"""Process frame of the coordinating roles (pipeline, orchestrator, scheduler).

Sets up logging, serves ``/metrics`` and the health probes, turns SIGTERM/SIGINT
into a graceful stop, and runs the role until it returns.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Awaitable, Callable

from loom.health import HealthServer
from loom.logs import setup_logging


def run_role(
    args: argparse.Namespace,
    role: Callable[[asyncio.Event], Awaitable[None]],
    ready: Callable[[], bool],
) -> int:
    """Run ``role(stop)`` with logging, health server and signal handling; returns the exit code."""
    setup_logging(args.log_level, args.log_json)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        health = HealthServer(args.metrics_port, ready=lambda: ready() and not stop.is_set())
        await health.start()
        try:
            await role(stop)
        finally:
            await health.stop()

    asyncio.run(main())
    return 0
