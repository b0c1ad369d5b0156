"""``loom eval``: run an eval suite against a worker, store the run, compare it with a baseline.

By default each case runs through the worker's real engine in this process, on the tier's real
provider (the embedded llama.cpp model for tier ``local``, started for the run), with no NATS.
``--nats-url`` sends the cases to the router of a running system instead. Exit 0 when the gate
passes, 1 when the aggregate is below the threshold or a case regressed against ``--baseline``,
2 on bad input (suite, manifests, tier, missing baseline).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from loom.api.loader import LoadError, expand_paths, load_paths
from loom.bus import Bus, BusError
from loom.cli.common import add_local_credentials_option, add_nats_options, client_nats_settings, fail
from loom.evals.compare import Comparison, baseline_of, compare_runs, inline_baseline
from loom.evals.report import gate, junit_xml, print_table, run_document, run_summary
from loom.evals.runner import RunResult, run_suite
from loom.evals.store import SqliteRunStore, StoreError, default_store_path
from loom.evals.suite import EvalSuite, SuiteError, load_suite
from loom.evals.targets import (
    BusTarget,
    EngineTarget,
    Target,
    TargetError,
    find_worker,
    model_client,
    needs_embedded_model,
    policy_of,
    tier_setup,
)
from loom.llm.base import Provider
from loom.llm.factory import ProviderConfigError
from loom.local.credentials import LocalCredentialsError

NAME = "eval"
HELP = "Run an eval suite against a worker; exit 1 below the threshold or on a regression."

DEFAULT_PATHS = ("config/samples",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", metavar="SUITE", help="eval suite YAML file")
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="DIR|FILE",
        help=f"manifests holding the Worker (and RouterPolicy), as `loom up` reads them; "
        f"default: {DEFAULT_PATHS[0]}",
    )
    parser.add_argument("--tier", help="tier to run on (default: the suite's, else the worker's default)")
    parser.add_argument("--baseline", metavar="NAME", help="compare with this saved baseline")
    parser.add_argument("--save-baseline", metavar="NAME", help="save this run as baseline NAME")
    parser.add_argument(
        "--export-baseline",
        metavar="NAME",
        help="print saved baseline NAME as the suite's `baseline:` (YAML, to keep with the suite in Git) "
        "and run nothing",
    )
    parser.add_argument("--junit", metavar="FILE", type=Path, help="write JUnit XML here")
    parser.add_argument("--threshold", type=float, help="aggregate score to reach (overrides the suite's)")
    parser.add_argument("--json", action="store_true", help="print the run as JSON instead of a table")
    parser.add_argument(
        "--store",
        type=Path,
        help="SQLite file of runs and baselines (default: <suite>.runs.sqlite beside the suite)",
    )
    parser.add_argument(
        "--local-llm-url",
        default=os.environ.get("LOOM_LOCAL_LLM_URL"),
        help="OpenAI-compatible URL for tiers on backend local without baseUrl (default: start the "
        "embedded model for the run); env LOOM_LOCAL_LLM_URL",
    )
    parser.add_argument("--tenant", help="tenant of the tasks (with --nats-url; default: the suite's tenant)")
    parser.add_argument(
        "--timeout",
        type=float,
        help="seconds to wait for each case's result (with --nats-url; default: the suite's "
        "caseTimeoutSeconds)",
    )
    parser.add_argument(
        "--summary-file",
        metavar="FILE",
        type=Path,
        help="also write the verdict, score and failed cases as compact JSON (at most 4 KB) here; "
        "an EvalSuite's Job writes it to its termination message",
    )
    parser.add_argument(
        "--connect-timeout", type=float, default=30.0, help="seconds to wait for the NATS connection"
    )
    parser.add_argument(
        "--retry-refused",
        action="store_true",
        help="keep trying credentials NATS refuses until --connect-timeout (an EvalSuite's Job: its "
        "identity is created with it and reaches the server's user list moments later)",
    )
    add_nats_options(parser)
    add_local_credentials_option(parser)
    # the cases go through the router only when --nats-url is given on the command line
    parser.set_defaults(nats_url=None)


class BadInput(Exception):
    """Exit 2 with this message."""


_fail = partial(fail, "loom eval")


@contextlib.contextmanager
def _embedded_model(needed: bool, url: str | None, concurrency: int) -> Iterator[str | None]:
    """The URL for tiers on the embedded model: the given one, or llama.cpp servers for the run
    (as many as cases run at once, up to the cores; ``LOOM_LOCAL_SERVERS`` overrides)."""
    if not needed or url:
        yield url
        return
    from loom.llm.local_server import LocalLlamaPool, LocalModelUnavailable
    from loom.local.llm import DEFAULT_CONTEXT, local_model_path

    with tempfile.TemporaryDirectory(prefix="loom-eval-") as tmp:
        log = Path(tmp) / "llama.log"
        try:
            server = LocalLlamaPool(
                local_model_path(), widest=concurrency, n_ctx=DEFAULT_CONTEXT, log_path=log
            )
            print("loom eval: starting the embedded model", file=sys.stderr)
            server.start(wait_seconds=180)
        except LocalModelUnavailable as exc:
            tail = "".join(
                p.read_text(errors="replace")[-2000:] for p in sorted(Path(tmp).glob("llama*.log"))
            )
            raise BadInput(f"the embedded model is unavailable: {exc}\n{tail}".rstrip()) from None
        try:
            yield server.base_url
        finally:
            server.stop()


def _prepare(args: argparse.Namespace) -> tuple[EvalSuite, Any, str, Any]:
    """Suite, Worker resource, tier name and RouterPolicy; BadInput for anything wrong."""
    try:
        suite = load_suite(args.suite)
    except SuiteError as exc:
        raise BadInput("invalid suite:\n  " + "\n  ".join(exc.problems)) from None
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise BadInput(f"--threshold must be between 0 and 1, got {args.threshold:g}")
    # the suite may sit among the manifests it names; it is not one of them
    suite_file = Path(args.suite).resolve()
    files = [f for f in expand_paths(args.paths or DEFAULT_PATHS) if f.resolve() != suite_file]
    try:
        resources = load_paths(files)
    except LoadError as exc:
        raise BadInput("invalid manifests:\n  " + "\n  ".join(exc.problems)) from None
    try:
        worker = find_worker(resources, suite.worker)
        policy = policy_of(resources)
    except TargetError as exc:
        raise BadInput(str(exc)) from None
    tier = args.tier or suite.tier or worker.spec.default_model_tier
    if tier not in worker.spec.served_tiers:
        raise BadInput(
            f"worker {suite.worker!r} does not serve tier {tier!r} "
            f"(serves: {', '.join(worker.spec.served_tiers)})"
        )
    return suite, worker, tier, policy


async def _run(
    args: argparse.Namespace, suite: EvalSuite, worker: Any, tier: str, policy: Any, local_url: str | None
) -> RunResult:
    judges: dict[str | None, Provider] = {}
    target: Target
    bus = None
    try:
        for judge_tier in suite.judges_on(tier):
            tdef, env = tier_setup(policy, judge_tier, local_url)
            provider = model_client(tdef, {**os.environ, **env})
            judges[judge_tier] = provider
            if judge_tier == tier:
                judges[None] = provider
        if args.nats_url:
            tenant = args.tenant or suite.tenant
            timeout = args.timeout or suite.case_timeout_seconds
            settings = client_nats_settings(args, "loom-eval", tenant=tenant)
            bus = await Bus.connect(
                settings, connect_timeout=args.connect_timeout, retry_refused=args.retry_refused
            )
            target = BusTarget(bus, worker.spec.name, tier, tenant=tenant, timeout=timeout)
        else:
            tdef, env = tier_setup(policy, tier, local_url)
            target = EngineTarget(worker, tdef, env)
        await target.start()
        try:
            return await run_suite(
                suite,
                target,
                tier=tier,
                mode="router" if args.nats_url else "engine",
                worker_schema=worker.spec.output_schema,
                judges=judges,
                threshold=args.threshold,
                on_case=None if args.json else _progress,
            )
        finally:
            await target.close()
    finally:
        for provider in {id(p): p for p in judges.values()}.values():
            await provider.close()
        if bus is not None:
            await bus.close()


def _progress(case: Any) -> None:
    print(f"  {case.case_id}: {case.score:.3f} {'pass' if case.passed else 'FAIL'}", file=sys.stderr)


def _uses_embedded_model(
    args: argparse.Namespace, suite: EvalSuite, worker: Any, tier: str, policy: Any
) -> bool:
    tiers = suite.judges_on(tier)
    if not args.nats_url and worker.spec.worker_kind == "llm":
        tiers.add(tier)
    return any(needs_embedded_model(tier_setup(policy, t, None)[0]) for t in tiers)


def run(args: argparse.Namespace) -> int:
    try:
        suite, worker, tier, policy = _prepare(args)
        store = SqliteRunStore(args.store or default_store_path(args.suite))
        if args.export_baseline:  # print it as the suite's ``baseline:`` block
            saved = baseline_of(store.baseline(suite.name, args.export_baseline), args.export_baseline)
            print(yaml.safe_dump({"baseline": saved.to_manifest_dict()}, sort_keys=False), end="")
            return 0
        # --baseline names a saved one; without it, the suite's own (spec.baseline), if it has one.
        baseline = store.baseline(suite.name, args.baseline) if args.baseline else inline_baseline(suite)
        baseline_name = args.baseline or (suite.baseline.name if suite.baseline else "")
        needed = _uses_embedded_model(args, suite, worker, tier, policy)
        with _embedded_model(needed, args.local_llm_url, suite.concurrency) as local_url:
            result = asyncio.run(_run(args, suite, worker, tier, policy, local_url))
        store.save_run(result)
        if args.save_baseline:
            store.save_baseline(suite.name, args.save_baseline, result.run_id)
    except (BadInput, StoreError, TargetError, ProviderConfigError, BusError, LocalCredentialsError) as exc:
        return _fail(str(exc))
    comparison: Comparison | None = None
    if baseline is not None:
        comparison = compare_runs(result, baseline, name=baseline_name, tolerance=suite.regression_tolerance)
    reasons = gate(result, comparison)
    if args.junit:
        try:
            args.junit.parent.mkdir(parents=True, exist_ok=True)
            args.junit.write_bytes(junit_xml(result, comparison))
        except OSError as exc:
            return _fail(f"cannot write {args.junit}: {exc.strerror or exc} (run {result.run_id} is stored)")
    if args.summary_file:
        try:
            args.summary_file.write_text(run_summary(result, reasons, comparison), encoding="utf-8")
        except OSError as exc:
            return _fail(
                f"cannot write {args.summary_file}: {exc.strerror or exc} (run {result.run_id} is stored)"
            )
    if args.json:
        print(json.dumps(run_document(result, comparison, reasons), indent=2, ensure_ascii=False))
    else:
        print_table(result, comparison, sys.stdout)
        if args.save_baseline:
            print(f"saved run {result.run_id} as baseline {args.save_baseline!r}")
    for reason in reasons:
        print(f"loom eval: FAIL: {reason}", file=sys.stderr)
    return 1 if reasons else 0
