"""``loom render``: the Kubernetes objects the operator would create for some manifests.

For review and GitOps diffs. Uses the operator's own render functions and settings
(``LOOM_*`` environment, overridable here). Offline, so objects carry no
ownerReferences (those need the live resources' uids).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

NAME = "render"
HELP = "Render Loom manifests into the Kubernetes objects the operator would create (for review and GitOps)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="DIR|FILE", help="manifests or directories of them")
    parser.add_argument(
        "-o",
        "--output",
        default="-",
        help="'-' for stdout (default), a .yaml file (all objects), or a directory (one file per resource)",
    )
    parser.add_argument("-n", "--namespace", default="default", help="namespace for resources that name none")
    parser.add_argument("--keda", action="store_true", help="render KEDA ScaledObjects for autoscaled tiers")
    parser.add_argument(
        "--image", help="image of rendered pods (default: env LOOM_IMAGE or the release image)"
    )
    parser.add_argument("--nats-url", help="NATS URL given to pods (default: env LOOM_NATS_URL)")
    parser.add_argument(
        "--bus-users",
        action="store_true",
        help="print each resource's NATS user, permissions and `nsc add user` command (for your own "
        "NATS accounts, nats.auth.mode creds), plus the admin and LOOM_NATS_TENANTS, instead of objects",
    )


#: Stalled reasons about a reference to another resource (the operator re-checks them as resources come).
REFERENCE_REASONS = ("UnknownWorkerType", "UnknownPipeline")


def name_problems(resources: list[Any], namespace: str) -> list[str]:
    """Names the API server would refuse (with the name to use), and resources that would share objects.

    Plain files' names were already mapped to valid object names by the loader; a manifest's
    ``metadata.name`` is its author's and is only checked, with the same message as ``loom validate``.
    """
    from loom.api.names import name_problem

    problems = []
    seen: dict[tuple[str, str, str], Any] = {}
    for r in resources:
        problem = name_problem(r.kind, r.name)
        if problem:
            problems.append(f"{r.source}: {r.kind}/{r.name}: metadata.{problem}")
        key = (r.kind, r.namespace or namespace, r.name)
        if key in seen:
            problems.append(
                f"{r.source}: {r.kind}/{r.name}: its objects would have the names of the {r.kind} "
                f"from {seen[key].source}; rename one"
            )
        seen[key] = r
    return problems


def render_resources(
    resources: list[Any], settings: Any, *, keda: bool, namespace: str
) -> dict[str, list[dict[str, Any]]]:
    """Objects per resource (``<Kind>-<name>`` → objects), rendered as the operator would."""
    from loom_operator.dispatch import PipelineEntry, PolicyEntry, Stalled, WorkerEntry, render_resource
    from loom_operator.render import Owner, worker_route

    problems = name_problems(resources, namespace)
    if problems:
        raise ValueError("\n".join(problems))
    by_ns: dict[str, list[Any]] = defaultdict(list)
    for r in resources:
        by_ns[r.namespace or namespace].append(r)
    out: dict[str, list[dict[str, Any]]] = {}
    for ns, items in by_ns.items():
        policies = [PolicyEntry(r.name, r.spec) for r in items if r.kind == "RouterPolicy"]
        workers = [
            WorkerEntry(r.name, r.spec.worker_type, worker_route(r.spec), tuple(r.spec.served_tiers), r.spec)
            for r in items
            if r.kind == "Worker"
        ]
        pipelines = [PipelineEntry(r.name, r.spec.pipeline_name) for r in items if r.kind == "Pipeline"]
        for r in items:
            try:
                objects = render_resource(
                    Owner(r.kind, r.name, ns),
                    r,
                    settings,
                    keda=keda,
                    policies=policies,
                    workers=workers,
                    pipelines=pipelines,
                )
            except Stalled as exc:
                hint = ""
                if exc.reason in REFERENCE_REASONS:
                    hint = " (references resolve among the manifests rendered together: include them)"
                problems.append(f"{r.source}: {r.kind}/{r.name}: {exc.message}{hint}")
                continue
            out[f"{r.kind.lower()}-{r.name}"] = objects
    if problems:
        raise ValueError("\n".join(problems))
    return out


def bus_users(resources: list[Any], settings: Any, namespace: str) -> list[dict[str, Any]]:
    """One record per NATS user the resources need (and the admin and the settings' tenants)."""
    from loom_operator.render import Owner
    from loom_operator.render.bus_auth import admin_identity, identity, tenant_identity, user_record

    out = []
    for r in resources:
        owner = Owner(r.kind, r.name, r.namespace or namespace)
        out.append(user_record(identity(owner, r.spec), owner))
    out.append(user_record(admin_identity()))
    out += [user_record(tenant_identity(t)) for t in settings.nats_tenants]
    return out


def run(args: argparse.Namespace) -> int:
    from loom.api import LoadError, load_paths
    from loom_operator.settings import Settings

    try:
        resources = load_paths(args.paths)
    except LoadError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 1
    try:
        settings = Settings.from_env().with_overrides(image=args.image, nats_url=args.nats_url)
    except ValueError as exc:
        print(f"loom render: {exc}", file=sys.stderr)
        return 2
    try:
        rendered = render_resources(resources, settings, keda=args.keda, namespace=args.namespace)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    if args.bus_users:
        sys.stdout.write(yaml.safe_dump_all(bus_users(resources, settings, args.namespace), sort_keys=False))
        return 0
    if args.output == "-" or args.output.endswith((".yaml", ".yml")):
        text = yaml.safe_dump_all([o for objs in rendered.values() for o in objs], sort_keys=False)
        if args.output == "-":
            sys.stdout.write(text)
        else:
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            Path(args.output).write_text(text, encoding="utf-8")
    else:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        for key, objects in rendered.items():
            (out / f"{key}.yaml").write_text(yaml.safe_dump_all(objects, sort_keys=False), encoding="utf-8")
    count = sum(len(v) for v in rendered.values())
    print(f"rendered {count} objects for {len(rendered)} resources", file=sys.stderr)
    return 0
