"""``loom validate FILE...``: check worker, pipeline, router-policy and schedule files without infrastructure.

Prints every problem in every file (named by file, resource and field), and
exits 1 when there is any. Pipelines get their stage-graph checks; schema refs
(``inputSchemaRef``/``outputSchemaRef``) are imported and resolved.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loom.api.loader import LoadError, expand_paths, load_paths, resolve_schema_refs

NAME = "validate"
HELP = "Validate config files and manifests; print every problem, exit 1 if any."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="files or directories (*.yaml, *.yml)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print problems only")


def check_file(path: Path) -> tuple[list[str], list[str]]:
    """(resources found, problems) for one file."""
    from loom.router.routing import load_router_config

    found: list[str] = []
    problems: list[str] = []
    text = path.read_text(encoding="utf-8") if path.is_file() else None
    if text is not None and _looks_like_router_config(text):
        try:
            cfg = load_router_config([path])
        except LoadError as exc:
            return found, exc.problems
        return [f"RouterConfig ({len(cfg.workers or {})} worker types)"], problems
    try:
        resources = load_paths([path])
    except LoadError as exc:
        return found, exc.problems
    for r in resources:
        found.append(f"{r.kind}/{r.name}")
        if r.kind == "Worker":
            try:
                resolve_schema_refs(r.spec)
            except (ImportError, TypeError, ValueError) as exc:
                problems.append(f"{path}: {r.kind}/{r.name}: schema ref: {exc}")
    return found, problems


def _looks_like_router_config(text: str) -> bool:
    import yaml

    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError:
        return False
    return bool(docs) and all(
        isinstance(d, dict) and "policy" in d and "apiVersion" not in d and "kind" not in d for d in docs
    )


def run(args: argparse.Namespace) -> int:
    paths = expand_paths(args.files)
    missing = [str(p) for p in map(Path, args.files) if not p.exists()]
    total = 0
    for m in missing:
        print(f"{m}: no such file or directory", file=sys.stderr)
        total += 1
    for path in paths:
        if not path.exists():
            continue
        found, problems = check_file(path)
        total += len(problems)
        for p in problems:
            print(p, file=sys.stderr)
        if not problems and not args.quiet:
            print(f"{path}: OK ({', '.join(found) or 'nothing to check'})")
    if total:
        print(f"{total} problem{'s' if total != 1 else ''} found", file=sys.stderr)
        return 1
    return 0
