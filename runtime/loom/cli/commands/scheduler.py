"""``loom scheduler --config FILE...``: fire cron and interval schedules (one dispatch per slot)."""

from __future__ import annotations

import argparse

from loom.api.loader import LoadError
from loom.cli.common import add_runtime_options, fail

NAME = "scheduler"
HELP = "Run the scheduler: dispatch goals or tasks on cron or interval schedules."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        required=True,
        nargs="+",
        action="extend",
        help="Schedule manifests, plain schedule YAML, or files with a schedules: list (files or dirs).",
    )
    add_runtime_options(parser)


def run(args: argparse.Namespace) -> int:
    from loom.bus import Bus
    from loom.cli.commands._serve import Ready, RoleRun, serve_on_bus
    from loom.scheduler.service import SchedulerService, load_schedules

    try:
        schedules = load_schedules(args.config)
    except LoadError as exc:
        return fail("loom scheduler", f"invalid config:\n{exc}")

    def build(bus: Bus) -> tuple[RoleRun, Ready]:
        service = SchedulerService(bus, schedules)
        return service.run, service.is_ready

    return serve_on_bus(args, "scheduler", build)
