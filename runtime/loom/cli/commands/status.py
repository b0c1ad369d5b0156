"""``loom status``: the running local system: its processes, queues and dead letters.

Processes come from the run dir's state file of ``loom up``; consumers, lag and
the dead-letter count come from NATS' monitoring endpoint, so ``--nats-monitor-url``
also shows any NATS (a cluster's, through a port-forward) without ``loom up``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from loom.cli.common import fail
from loom.local.state import RunState, default_run_dir, pid_alive, read_state
from loom.local.view import Snapshot, collect, consumers_table, header, processes_table, tiers_table

NAME = "status"
HELP = "Show the running system: processes of `loom up`, consumers and lag, dead letters."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=default_run_dir(),
        help="run dir of `loom up`; env LOOM_RUN_DIR",
    )
    parser.add_argument(
        "--nats-monitor-url",
        default=env("LOOM_NATS_MONITOR_URL"),
        help="NATS monitoring endpoint (default: the one `loom up` recorded)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--wait-ready",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to SECONDS until every process of `loom up` is ready (exit 1 if not)",
    )


def _state(run_dir: Path) -> RunState | None:
    state = read_state(run_dir)
    if state is not None and state.phase not in ("stopped", "failed") and not pid_alive(state.pid):
        state.phase = "dead"
        state.message = f"loom up (pid {state.pid}) is not running"
    return state


def wait_ready(run_dir: Path, seconds: float) -> tuple[bool, str]:
    """Poll the state file until ``loom up`` reports ready, fails or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while True:
        state = _state(run_dir)
        if state is not None and state.phase == "ready":
            return True, "ready"
        if state is not None and state.phase in ("failed", "stopped", "dead"):
            return False, f"loom up {state.phase}: {state.message}".rstrip(": ")
        if time.monotonic() > deadline:
            phase = state.phase if state else f"no state file in {run_dir}"
            return False, f"not ready after {seconds:g}s ({phase})"
        time.sleep(0.25)


def as_json(state: RunState | None, snap: Snapshot) -> dict[str, Any]:
    """The status as one JSON-ready document."""
    return {
        "up": None if state is None else {k: v for k, v in state.as_dict().items() if k != "processes"},
        "processes": snap.processes,
        "consumers": [{**c.__dict__, "lag": c.lag} for c in snap.consumers],
        "dead_letters": snap.dead_letters,
        "nats_error": snap.nats_error,
    }


def run(args: argparse.Namespace) -> int:
    run_dir = args.run_dir.resolve()
    if args.wait_ready:
        ok, message = wait_ready(run_dir, args.wait_ready)
        print(f"loom status: {message}", file=sys.stderr)
        if not ok:
            return 1
    state = _state(run_dir)
    monitor = args.nats_monitor_url or (state.nats_monitor_url if state else None)
    if state is None and not monitor:
        return fail("loom status", f"no `loom up` state in {run_dir} and no --nats-monitor-url given", 1)
    live = state is not None and state.phase not in ("stopped", "failed", "dead")
    processes = state.processes if (state and live) else []

    async def gather() -> Snapshot:
        async with httpx.AsyncClient(timeout=2.0) as client:
            return await collect(client, processes, monitor)

    snap = asyncio.run(gather())
    if state is not None:
        snap.nats_url = state.nats_url
        snap.local_llm_url = state.local_llm_url
        snap.started_at = state.started_at
    if args.json:
        print(json.dumps(as_json(state, snap), indent=2, sort_keys=True))
    else:
        console = Console() if sys.stdout.isatty() else Console(width=140)
        if state is not None and not live:
            console.print(f"loom up in {run_dir}: {state.phase} {state.message}".rstrip())
        elif state is not None:
            console.print(header(snap))
            console.print(processes_table(snap))
            console.print(tiers_table(snap))
        if monitor:
            console.print(consumers_table(snap))
            if snap.nats_error:
                console.print(snap.nats_error, style="red")
            else:
                console.print(f"dead letters: {snap.dead_letters or 0}")
    return 0 if live or (state is None and not snap.nats_error) else 1
