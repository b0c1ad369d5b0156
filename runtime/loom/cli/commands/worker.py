"""``loom worker``: run one worker type on one tier."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from loom.api.loader import LoadError, load_one, resolve_schema_refs
from loom.api.router_policy import FALLBACK_TIERS_ENV, RouterPolicySpec, TierDefinition, fallback_config
from loom.api.worker import WorkerSpec
from loom.bus import Bus
from loom.cli.commands._serve import Ready, RoleRun, configure_logging, serve_on_bus
from loom.cli.common import add_runtime_options, fail
from loom.llm.endpoints import ENDPOINTS_ENV
from loom.worker.engine import build_engine
from loom.worker.knowledge import knowledge_problems

NAME = "worker"
HELP = "Run a worker (LLM or processor) for one tier."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument(
        "--config",
        default=env("LOOM_WORKER_CONFIG"),
        metavar="FILE",
        help="Worker YAML or manifest; env LOOM_WORKER_CONFIG",
    )
    parser.add_argument(
        "--tier",
        default=env("LOOM_TIER"),
        help="tier to serve (default: the worker's defaultModelTier); env LOOM_TIER",
    )
    parser.add_argument(
        "--policy",
        default=env("LOOM_POLICY"),
        metavar="FILE",
        help="RouterPolicy file with the tier's definition; else env LOOM_TIER_CONFIG (JSON)",
    )
    parser.add_argument(
        "--ack-grace-seconds",
        type=float,
        default=float(env("LOOM_ACK_GRACE_SECONDS", "30")),
        help="ack wait = timeout_seconds + this; env LOOM_ACK_GRACE_SECONDS",
    )
    parser.add_argument(
        "--drain-grace-seconds",
        type=float,
        default=float(env("LOOM_DRAIN_GRACE_SECONDS", "25")),
        help="on SIGTERM, time given to in-flight tasks before they are handed back",
    )
    parser.add_argument(
        "--base-dir",
        default=env("LOOM_BASE_DIR"),
        help="folder that relative knowledge and silo paths start from (default: the config file's folder); "
        "env LOOM_BASE_DIR",
    )
    add_runtime_options(parser)


def _load(args: argparse.Namespace) -> tuple[WorkerSpec, TierDefinition]:
    from loom.worker.runtime import load_tier_definition

    if not args.config:
        raise LoadError(["--config (or LOOM_WORKER_CONFIG) is required"])
    spec: WorkerSpec = resolve_schema_refs(load_one(args.config, "Worker").spec)
    tier = args.tier or spec.default_model_tier
    if args.policy:  # the policy's endpoint allow-list travels with its tiers
        policy: RouterPolicySpec = load_one(args.policy, "RouterPolicy").spec
        os.environ[ENDPOINTS_ENV] = policy.model_endpoints.env_value()
        if policy.tier(tier).fallback:  # the fallback tiers' definitions travel the same way
            os.environ[FALLBACK_TIERS_ENV] = fallback_config(policy.fallback_tiers(tier, mounted_keys=False))
    return spec, load_tier_definition(tier, args.policy)


def run(args: argparse.Namespace) -> int:
    configure_logging(args)
    try:
        spec, tier = _load(args)
        base_dir = args.base_dir or os.path.dirname(os.path.abspath(args.config))
        if missing := knowledge_problems(spec, Path(base_dir)):
            raise LoadError([f"loom worker: {args.config}: {p}" for p in missing])
        engine = build_engine(spec, tier, base_dir=base_dir)  # configuration errors surface before connecting
        if spec.worker_kind == "llm":
            from loom.llm.factory import check_tier_endpoint

            check_tier_endpoint(tier)  # a refused model endpoint stops the worker before it takes tasks
    except LoadError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    except (ImportError, TypeError, ValueError, KeyError) as exc:
        return fail("loom worker", exc)
    from loom.worker.runtime import WorkerOptions, WorkerRuntime

    options = WorkerOptions(ack_grace=args.ack_grace_seconds, drain_grace=args.drain_grace_seconds)

    def build(bus: Bus) -> tuple[RoleRun, Ready]:
        runtime = WorkerRuntime(bus, spec, tier, engine, options)
        return runtime.run, lambda: runtime.ready

    return serve_on_bus(args, f"worker-{spec.name}-{tier.name}", build)
