"""What every long-running role does around its work: logging, signals, health server, bus."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from loom.bus import Bus
from loom.cli.common import nats_settings
from loom.health import HealthServer
from loom.logs import setup_logging

log = logging.getLogger("loom")


def configure_logging(args: argparse.Namespace) -> None:
    """Apply ``--log-level`` / ``--log-json``."""
    setup_logging(getattr(args, "log_level", "INFO"), getattr(args, "log_json", False))


def install_stop_handlers(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT start a graceful drain; a second signal is ignored while draining."""
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if not stop.is_set():
            log.info("%s received: draining", sig.name)
            stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)


async def serve(
    args: argparse.Namespace,
    role: str,
    make: Callable[[Bus], Awaitable[tuple[Callable[[asyncio.Event], Awaitable[None]], Callable[[], bool]]]],
) -> int:
    """Connect, build the role with ``make(bus) -> (run, ready)``, serve health, run until a signal."""
    stop = asyncio.Event()
    install_stop_handlers(stop)
    bus = await Bus.connect(nats_settings(args, name=f"loom-{role}"))
    health: HealthServer | None = None
    try:
        run, ready = await make(bus)
        health = HealthServer(args.metrics_port, ready)
        await health.start()
        await run(stop)
    finally:
        if health is not None:
            await health.stop()
        await bus.close()
    log.info("%s stopped", role)
    return 0
