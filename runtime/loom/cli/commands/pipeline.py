"""``loom pipeline --config FILE``: run a pipeline's goals (its own goal subject, durable and resumable)."""

from __future__ import annotations

import argparse
import os

from loom.api.loader import LoadError, load_one
from loom.cli.common import add_goal_consumer_options, add_runtime_options, fail

NAME = "pipeline"
HELP = "Run a pipeline orchestrator: consume loom.goals.<pipeline>, run its stages, publish goal results."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="Pipeline manifest or plain pipeline YAML.")
    add_goal_consumer_options(parser)
    parser.add_argument(
        "--state-ttl",
        type=float,
        default=2 * 86400.0,
        help="Seconds finished goals keep their result (default 2 days).",
    )
    parser.add_argument(
        "--state-store",
        default=None,
        metavar="URL",
        help="where goal states live: nats (the loom-pipeline-state bucket) or a redis:// or rediss:// URL "
        "(Redis, Valkey); overrides the Pipeline's stateStore; default: the stateStore, else "
        "env LOOM_PIPELINE_STATE_STORE (better for a URL with a password), else nats",
    )
    add_runtime_options(parser)


def run(args: argparse.Namespace) -> int:
    from loom.bus import Bus
    from loom.cli.commands._serve import Ready, RoleRun, serve_on_bus
    from loom.pipeline.service import PipelineOptions, PipelineService
    from loom.pipeline.state import StateStoreConfigError, state_store_url

    try:
        resource = load_one(args.config, "Pipeline")
        spec = resource.spec
        if not spec.name:  # plain YAML without a name: the file's stem, validated like any name
            spec = type(spec).model_validate(spec.model_dump() | {"name": resource.name})
    except (LoadError, ValueError) as exc:
        return fail("loom pipeline", f"invalid config:\n{exc}")
    try:
        state_url = state_store_url(spec.state_store, args.state_store, os.environ)
    except StateStoreConfigError as exc:
        return fail("loom pipeline", exc)
    options = PipelineOptions(
        ack_wait=args.ack_wait,
        max_deliver=args.max_deliver,
        state_ttl=args.state_ttl,
        state_url=state_url,
        drain_grace=args.drain_grace,
    )

    def build(bus: Bus) -> tuple[RoleRun, Ready]:
        service = PipelineService(spec, bus, options)
        return service.run, service.is_ready

    return serve_on_bus(args, f"pipeline-{spec.pipeline_name}", build)
