"""What every long-running role does around its work: logging, signals, health server, bus.

One frame for all roles: :func:`serve_on_bus` connects a Bus, builds the role on it
(every role receives its Bus) and closes it after the role stops. SIGTERM/SIGINT start a graceful
drain, ``/readyz`` turns not-ready as soon as the drain starts (no new work is
sent to a stopping pod), and the exit code is 0 after a clean stop.

``/healthz`` fails once the process has lost NATS for longer than ``--nats-lost-grace``
seconds, so Kubernetes restarts a process that cannot get back. A connection the
server closed for good (nats-py never reconnects after a protocol ``-ERR``) also
stops the role, which then exits with code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable

from loom import tracing
from loom.bus import Bus, nats_liveness
from loom.cli.common import nats_settings
from loom.health import HealthServer
from loom.logs import setup_logging

log = logging.getLogger("loom")

#: ``run(stop)``: works until ``stop`` is set, then drains and returns.
RoleRun = Callable[[asyncio.Event], Awaitable[None]]
#: Readiness of the role (NATS connected, consumer bound).
Ready = Callable[[], bool]


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


async def _watch_connections(stop: asyncio.Event, lost: list[str], every: float = 0.5) -> None:
    """Stop the role when a connection was closed for good: no reconnect will come."""
    while not stop.is_set():
        for bus in list(Bus.open_buses):
            if bus.state.closed is not None:
                lost.append(bus.state.closed)
                log.error("stopping: the NATS connection was closed and will not reconnect (%s)", lost[0])
                stop.set()
                return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


async def _run_framed(
    args: argparse.Namespace,
    role: str,
    start: Callable[[contextlib.AsyncExitStack], Awaitable[tuple[RoleRun, Ready]]],
) -> int:
    tracing.setup(f"loom-{role}")
    stop = asyncio.Event()
    install_stop_handlers(stop)
    grace = float(getattr(args, "nats_lost_grace", 60.0))
    lost: list[str] = []
    async with contextlib.AsyncExitStack() as stack:
        run, ready = await start(stack)
        health = HealthServer(
            args.metrics_port, lambda: ready() and not stop.is_set(), live=lambda: nats_liveness(grace)
        )
        await health.start()
        stack.push_async_callback(health.stop)
        watch = asyncio.create_task(_watch_connections(stop, lost))
        try:
            await run(stop)
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
            tracing.flush()
    if lost:
        log.error("%s stopped: lost NATS for good", role)
        return 1
    log.info("%s stopped", role)
    return 0


def serve_on_bus(args: argparse.Namespace, role: str, build: Callable[[Bus], tuple[RoleRun, Ready]]) -> int:
    """Connect a Bus (closed after the role stops), build the role on it with ``build(bus)``, run it."""
    configure_logging(args)

    async def start(stack: contextlib.AsyncExitStack) -> tuple[RoleRun, Ready]:
        bus = await Bus.connect(nats_settings(args, name=f"loom-{role}"), role=role.split("-")[0])
        stack.push_async_callback(bus.close)
        return build(bus)

    return asyncio.run(_run_framed(args, role, start))
