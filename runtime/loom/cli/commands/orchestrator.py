"""``loom orchestrator --config FILE``: decompose goals over workers with a model, dispatch, synthesize."""

from __future__ import annotations

import argparse

from loom.api.loader import LoadError
from loom.cli.common import add_goal_consumer_options, add_runtime_options, fail

NAME = "orchestrator"
HELP = "Run the goal orchestrator: consume loom.goals.incoming, decompose, dispatch, checkpoint, synthesize."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="Orchestrator YAML (name, workers, decomposer, ...).")
    add_goal_consumer_options(parser)
    add_runtime_options(parser)


def run(args: argparse.Namespace) -> int:
    from loom.bus import Bus
    from loom.cli.commands._serve import Ready, RoleRun, serve_on_bus
    from loom.llm.factory import ProviderConfigError, build_model_client
    from loom.orchestrator.config import load_config
    from loom.orchestrator.service import OrchestratorOptions, OrchestratorService

    try:
        config, catalog = load_config(args.config)
    except LoadError as exc:
        return fail("loom orchestrator", f"invalid config:\n{exc}")
    tier = config.decomposer.tier
    try:
        provider = build_model_client(tier)  # fails fast on a missing key or model, before taking goals
    except ProviderConfigError as exc:
        return fail("loom orchestrator", exc)
    options = OrchestratorOptions(
        ack_wait=args.ack_wait, max_deliver=args.max_deliver, drain_grace=args.drain_grace
    )

    def build(bus: Bus) -> tuple[RoleRun, Ready]:
        service = OrchestratorService(config, catalog, bus, lambda: provider, options)
        return service.run, service.is_ready

    return serve_on_bus(args, f"orchestrator-{config.name}", build)
