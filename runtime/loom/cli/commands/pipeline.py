"""``loom pipeline --config FILE``: run a pipeline's goals (its own goal subject, durable and resumable)."""

from __future__ import annotations

import argparse
import sys

from loom.api.loader import LoadError, load_one
from loom.cli.common import add_runtime_options, nats_settings

NAME = "pipeline"
HELP = "Run a pipeline orchestrator: consume loom.goals.<pipeline>, run its stages, publish goal results."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="Pipeline manifest or plain pipeline YAML.")
    parser.add_argument(
        "--ack-wait",
        type=float,
        default=30.0,
        help="Seconds without a heartbeat before a goal goes to another replica (default 30).",
    )
    parser.add_argument(
        "--max-deliver", type=int, default=10, help="Deliveries of one goal before giving up."
    )
    parser.add_argument(
        "--state-ttl",
        type=float,
        default=2 * 86400.0,
        help="Seconds finished goals keep their result (default 2 days).",
    )
    parser.add_argument(
        "--drain-grace", type=float, default=5.0, help="Seconds running goals get on shutdown."
    )
    add_runtime_options(parser)


def run(args: argparse.Namespace) -> int:
    from loom.cli.coordinator_run import run_role
    from loom.pipeline.service import PipelineOptions, PipelineService

    try:
        resource = load_one(args.config, "Pipeline")
        spec = resource.spec
        if not spec.name:  # plain YAML without a name: the file's stem, validated like any name
            spec = type(spec).model_validate(spec.model_dump() | {"name": resource.name})
    except (LoadError, ValueError) as exc:
        print(f"loom pipeline: invalid config:\n{exc}", file=sys.stderr)
        return 2
    service = PipelineService(
        spec,
        nats_settings(args, name=f"loom-pipeline-{spec.pipeline_name}"),
        PipelineOptions(
            ack_wait=args.ack_wait,
            max_deliver=args.max_deliver,
            state_ttl=args.state_ttl,
            drain_grace=args.drain_grace,
        ),
    )
    return run_role(args, service.run, service.ready.is_set)
