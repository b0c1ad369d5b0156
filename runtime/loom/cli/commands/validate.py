"""``loom validate FILE...``: check every config kind Loom reads, without infrastructure.

Each file's kind is detected (Worker, Pipeline, RouterPolicy / router rules, Schedule, EvalSuite, a router
config, a goal orchestrator config, an MCP gateway config) and checked by that kind's own loader.
Then what only the files together can tell: tier names against the RouterPolicy in effect
(``--policy``, one among the files, or the default tiers), object names the API server would
refuse, two resources that would become the same objects. Every problem is printed once, named
by file, resource and field; the exit code is 1 when there is any.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loom.api.loader import (
    EMPTY,
    LoadError,
    Resource,
    expand_paths,
    import_object,
    infer_kind,
    load_text,
    resolve_schema_refs,
)
from loom.api.names import name_problem
from loom.api.router_policy import RouterPolicySpec

NAME = "validate"
HELP = "Validate config files and manifests; print every problem, exit 1 if any."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="files or directories (*.yaml, *.yml)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print problems only")
    parser.add_argument(
        "--policy",
        metavar="FILE",
        help="RouterPolicy (or router config) whose tiers the files must use; default: the one among "
        "the files, else the default tiers local, standard, frontier",
    )
    parser.add_argument(
        "--base-dir",
        metavar="DIR",
        help="folder relative knowledge paths are read from (as `loom worker --base-dir`); "
        "default: each config file's folder",
    )


@dataclass
class FileReport:
    """What one file holds and what is wrong with it."""

    path: Path
    found: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    resources: list[Resource] = field(default_factory=list)
    #: (where, tier) for every tier name the file uses, checked against the policy in effect.
    tier_refs: list[tuple[str, str]] = field(default_factory=list)
    #: Knowledge files and silo folders of the file's workers (absolute), with the worker's label.
    knowledge: list[tuple[Path, str]] = field(default_factory=list)
    #: Policies the file defines (a RouterPolicy, or a router config's policy), with a label.
    policies: list[tuple[str, RouterPolicySpec]] = field(default_factory=list)

    def problem(self, *texts: str) -> None:
        """Record each problem once; loaders' lines that already name the file are kept as they are."""
        for text in texts:
            line = text if text.startswith(str(self.path)) else f"{self.path}: {text}"
            if line not in self.problems:
                self.problems.append(line)


def check_file(path: Path, base_dir: Path | None = None) -> FileReport:
    """Detect the kinds in one file and check each with its own loader."""
    report = FileReport(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        report.problem(f"cannot read: {exc.strerror or exc}")
        return report
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        report.problem(f"invalid YAML: {exc}")
        return report
    if not docs:
        report.problem(EMPTY)
        return report
    kinds = [infer_kind(d) if isinstance(d, dict) and "apiVersion" not in d else "" for d in docs]
    if len(docs) == 1 and kinds[0] == "Orchestrator":
        _check_orchestrator(report)
    elif len(docs) == 1 and kinds[0] == "MCPGateway":
        _check_gateway(report)
    elif all(k == "RouterConfig" for k in kinds):
        _check_router_config(report)
    else:
        # the folder `loom worker` reads relative paths from: the config file's, as given (os.path.abspath)
        folder = base_dir or Path(os.path.abspath(path)).parent
        _check_resources(report, text, folder, explicit_base=base_dir is not None)
    return report


def _check_resources(report: FileReport, text: str, base_dir: Path, *, explicit_base: bool) -> None:
    try:
        report.resources = load_text(text, str(report.path))
    except LoadError as exc:
        report.problem(*exc.problems)
        return
    for r in report.resources:
        label = _label(r)
        found = label if label.endswith(f"/{r.name}") else f"{label}, object name {r.name}"
        report.found.append(found)
        if r.is_manifest and (problem := name_problem(r.kind, r.name)):
            report.problem(f"{label}: metadata.{problem}")
        if r.kind == "Worker":
            _check_worker(report, label, r.spec, base_dir, explicit_base)
        elif r.kind == "Pipeline":
            report.tier_refs += [
                (f"{label}: pipelineStages[{i}] ({s.name}).tier", s.tier)
                for i, s in enumerate(r.spec.pipeline_stages)
                if s.tier
            ]
        elif r.kind == "Schedule" and r.spec.task is not None and r.spec.task.tier:
            report.tier_refs.append((f"{label}: task.tier", r.spec.task.tier))
        elif r.kind == "EvalSuite":
            report.tier_refs += [(f"{label}: tier", t) for t in [r.spec.tier] if t]
            report.tier_refs += [(f"{label}: judge tier", t) for t in sorted(r.spec.judge_tiers)]
        elif r.kind == "RouterPolicy":
            report.policies.append((f"RouterPolicy/{r.name} in {report.path}", r.spec))
            report.tier_refs += [(f"{label}: tierOverrides.{w}", t) for w, t in r.spec.tier_overrides.items()]
            report.tier_refs += [(f"{label}: rateLimits.{t}", t) for t in r.spec.rate_limits]


def _label(r: Resource) -> str:
    """``Kind/name`` with the name the user wrote (a plain file's worker type or pipeline name)."""
    return f"{r.kind}/{getattr(r.spec, 'name', None) or r.name}"


def _check_worker(report: FileReport, label: str, spec: Any, base_dir: Path, explicit_base: bool) -> None:
    from loom.worker.knowledge import knowledge_problems, resolve_path

    try:
        resolve_schema_refs(spec)
    except (ImportError, TypeError, ValueError) as exc:
        report.problem(f"{label}: schema ref: {exc}")
    classes = [("processingBackend", spec.processing_backend)] if spec.worker_kind == "processor" else []
    classes += [(f"knowledgeSilos ({s.name}).provider", s.provider) for s in spec.knowledge_silos]
    for where, class_path in classes:
        if not class_path:
            continue
        try:
            import_object(class_path)
        except ImportError as exc:
            report.problem(f"{label}: {where}: {exc}")
    paths = [*(s.path for s in spec.knowledge_sources), *(s.path for s in spec.knowledge_silos if s.path)]
    report.knowledge += [(Path(os.path.abspath(resolve_path(p, base_dir))), label) for p in paths]
    for p in knowledge_problems(spec, base_dir):
        report.problem(f"{label}: {p}")
    relative = [p for p in paths if p and not Path(p).expanduser().is_absolute()]
    if relative and spec.worker_kind == "llm":
        origin = "--base-dir" if explicit_base else "the config file's folder"
        note = f"relative knowledge paths are read from {base_dir} ({origin})"
        if note not in report.notes:
            report.notes.append(note)
    report.tier_refs.append((f"{label}: defaultModelTier", spec.default_model_tier))
    report.tier_refs += [(f"{label}: tiers[{i}]", t) for i, t in enumerate(spec.tiers)]


def _check_router_config(report: FileReport) -> None:
    from loom.router.routing import load_router_config

    try:
        cfg = load_router_config([report.path])
    except LoadError as exc:
        report.problem(*exc.problems)
        return
    report.found.append(f"RouterConfig ({len(cfg.workers or {})} worker types)")
    report.policies.append((f"the router config {report.path}", cfg.policy))
    for wt, route in (cfg.workers or {}).items():
        report.tier_refs.append((f"RouterConfig: workers.{wt}.defaultModelTier", route.default_model_tier))
        report.tier_refs += [(f"RouterConfig: workers.{wt}.tiers[{i}]", t) for i, t in enumerate(route.tiers)]


def _check_orchestrator(report: FileReport) -> None:
    from loom.orchestrator.config import load_config

    try:
        config, catalog = load_config(report.path)
    except LoadError as exc:
        report.problem(*exc.problems)
        return
    report.found.append(f"Orchestrator/{config.name} (workers: {', '.join(sorted(catalog))})")
    report.notes.append(f"relative worker paths are read from {report.path.resolve().parent}")


def _check_gateway(report: FileReport) -> None:
    from loom.mcp.config import GatewayConfigError, load_gateway

    try:
        plan = load_gateway(report.path)
    except GatewayConfigError as exc:
        report.problem(*exc.problems)
        return
    report.found.append(f"MCPGateway/{plan.config.name} (tools: {', '.join(sorted(plan.tools))})")
    report.notes.append(
        f"relative config paths are read from {report.path.resolve().parent}, then the current directory"
    )
    report.tier_refs += [
        (f"MCPGateway/{plan.config.name}: tools.workers[{i}].tier", e.tier)
        for i, e in enumerate(plan.config.tools.workers)
        if e.tier
    ]


def skip_knowledge(reports: list[FileReport]) -> list[FileReport]:
    """Files that are knowledge of a worker among the files (a few-shot YAML, a silo's files) are not
    configs: reported as such instead of as broken configs (``loom validate configs/`` walks them)."""
    owners = [k for r in reports for k in r.knowledge]
    out = []
    for report in reports:
        path = Path(os.path.abspath(report.path))
        owner = next((label for k, label in owners if path == k or k in path.parents), None)
        if owner is not None and not report.resources:
            report = FileReport(report.path, found=[f"knowledge of {owner}, not a config"])
        out.append(report)
    return out


def tiers_in_effect(reports: list[FileReport], policy_file: str | None) -> tuple[list[str], str]:
    """The tier names the files must use, and where they come from (for the message)."""
    if policy_file:
        from loom.router.routing import load_router_config

        return load_router_config([policy_file]).policy.tier_names, f"from {policy_file}"
    policies = [p for r in reports for p in r.policies]
    if not policies:
        origin = "the default tiers, as no valid RouterPolicy is among the files; --policy FILE sets yours"
        return RouterPolicySpec().tier_names, origin
    names: list[str] = []
    for _, spec in policies:
        names += [n for n in spec.tier_names if n not in names]
    return names, "from " + " and ".join(label for label, _ in policies)


def check_across(reports: list[FileReport], policy_file: str | None) -> None:
    """Problems only the files together show: unknown tiers, a stage on a tier its worker does not
    serve (when the worker is among the files), two resources sharing object names."""
    known, origin = tiers_in_effect(reports, policy_file)
    for report in reports:
        for where, tier in report.tier_refs:
            if tier not in known:
                report.problem(f"{where}: unknown tier {tier!r} (known tiers: {', '.join(known)}; {origin})")
    workers = [r for rep in reports for r in rep.resources if r.kind == "Worker"]
    served = {r.spec.worker_type: r.spec.served_tiers for r in workers}
    for report in reports:
        for r in report.resources:
            if r.kind != "Pipeline":
                continue
            for i, stage in enumerate(r.spec.pipeline_stages):
                tiers = served.get(stage.worker_type)
                if stage.tier and stage.tier in known and tiers is not None and stage.tier not in tiers:
                    report.problem(
                        f"{_label(r)}: pipelineStages[{i}] ({stage.name}).tier: worker {stage.worker_type!r} "
                        f"does not serve tier {stage.tier!r} (serves {', '.join(tiers)})"
                    )
    for report in reports:
        for r in report.resources:
            tiers = served.get(r.spec.worker) if r.kind == "EvalSuite" else None
            if tiers is not None and r.spec.tier and r.spec.tier not in tiers:
                report.problem(
                    f"{_label(r)}: tier: worker {r.spec.worker!r} does not serve tier {r.spec.tier!r} "
                    f"(serves {', '.join(tiers)})"
                )
    seen: dict[tuple[str, str | None, str], tuple[FileReport, Resource]] = {}
    for report in reports:
        for r in report.resources:
            key = (r.kind, r.namespace, r.name)
            if key in seen:
                first, other = seen[key]
                report.problem(
                    f"{_label(r)}: its objects would be named {r.name!r} like those of {_label(other)} "
                    f"in {first.path}; rename one"
                )
            else:
                seen[key] = (report, r)


def run(args: argparse.Namespace) -> int:
    missing = [str(p) for p in map(Path, args.files) if not p.exists()]
    for m in missing:
        print(f"{m}: no such file or directory", file=sys.stderr)
    total = len(missing)
    base_dir = Path(os.path.abspath(args.base_dir)) if args.base_dir else None
    reports = skip_knowledge([check_file(p, base_dir) for p in expand_paths(args.files) if p.exists()])
    try:
        check_across(reports, args.policy)
    except LoadError as exc:  # of --policy: the files' own problems are in their reports
        for p in exc.problems:
            print(f"--policy: {p}", file=sys.stderr)
        total += len(exc.problems)
    for report in reports:
        total += len(report.problems)
        for p in report.problems:
            print(p, file=sys.stderr)
        if not report.problems and not args.quiet:
            print(f"{report.path}: OK ({'; '.join([', '.join(report.found), *report.notes])})")
        elif report.notes and report.problems:
            print(f"{report.path}: note: {'; '.join(report.notes)}", file=sys.stderr)
    if total:
        print(f"{total} problem{'s' if total != 1 else ''} found", file=sys.stderr)
        return 1
    return 0
