"""The project folder the Workshop serves: its manifests, loaded file by file, and path confinement.

Every path the Workshop reads or writes goes through :func:`confine`, so nothing outside the project
folder is touched, whatever a request names. Files load one by one (the loader `loom up` uses), so a
broken file is shown with its problems while the rest of the project stays usable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic.alias_generators import to_camel

from loom.api.common import GROUP_VERSION
from loom.api.loader import SPEC_MODELS, LoadError, Resource, expand_paths, load_text
from loom.api.router_policy import RouterPolicySpec, worker_tier
from loom.api.worker import WorkerSpec
from loom.local.manifests import PlanError, router_policy

#: Keys too common in other YAML (CI files, charts) to mark a document as Loom's.
_GENERIC_KEYS = frozenset({"name", "description", "resources", "replicas", "tenant", "tier", "concurrency"})
#: Top-level keys of every kind's plain file (both spellings): a document with none of them is not Loom's.
_LOOM_KEYS = (
    frozenset(
        k for model in SPEC_MODELS.values() for name in model.model_fields for k in (name, to_camel(name))
    )
    - _GENERIC_KEYS
) | {"schedules"}


def is_loom_file(text: str) -> bool:
    """Whether a YAML file is meant for Loom: a ``loom.dev`` manifest, or a plain document with a key
    of some Loom kind. Other YAML in the folder (CI files, charts, foreign manifests) is not listed,
    neither as a resource nor as a broken file; unparsable YAML is, so a typo is not hidden."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError:
        return True
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        if "apiVersion" in doc:
            if str(doc["apiVersion"]).split("/")[0] == GROUP_VERSION.split("/")[0]:
                return True
        elif set(map(str, doc)) & _LOOM_KEYS:
            return True
    return False


class ConfinementError(ValueError):
    """A path that leaves the project folder."""


def confine(root: Path, candidate: str | Path) -> Path:
    """``candidate`` (relative to ``root`` or absolute) resolved, if it stays inside ``root``.

    Symlinks are resolved first, so a link pointing out of the project is refused too.
    """
    base = root.resolve()
    path = Path(candidate)
    resolved = (path if path.is_absolute() else base / path).resolve()
    if resolved != base and base not in resolved.parents:
        raise ConfinementError(f"{candidate}: outside the project folder {base}")
    return resolved


def schema_summary(schema: dict[str, Any] | None) -> str:
    """One line about a JSON Schema: its fields with types, required ones marked ``*``."""
    if not schema:
        return "(any)"
    props = schema.get("properties")
    if not isinstance(props, dict) or not props:
        return str(schema.get("type", "(any)"))
    required = set(schema.get("required") or [])
    parts = []
    for name, sub in props.items():
        kind = sub.get("type", "any") if isinstance(sub, dict) else "any"
        if isinstance(sub, dict) and "enum" in sub:
            kind = "enum"
        parts.append(f"{name}{'*' if name in required else ''}: {kind}")
    return ", ".join(parts)


@dataclass
class WorkerEntry:
    """A Worker as the list shows it."""

    resource: Resource
    problems: list[str] = field(default_factory=list)

    @property
    def spec(self) -> WorkerSpec:
        spec: WorkerSpec = self.resource.spec
        return spec

    @property
    def name(self) -> str:
        return self.spec.worker_type


@dataclass
class Snapshot:
    """The project as loaded now: valid resources and each broken file's problems."""

    root: Path
    resources: list[Resource]
    broken: dict[str, list[str]]

    def of_kind(self, kind: str) -> list[Resource]:
        return [r for r in self.resources if r.kind == kind]

    def policy(self) -> tuple[RouterPolicySpec, list[str]]:
        """The RouterPolicy (default when none) and the problem when there are several."""
        try:
            return router_policy(self.resources)[1], []
        except PlanError as exc:
            return RouterPolicySpec(), exc.problems

    def workers(self) -> list[WorkerEntry]:
        """Every Worker with its validation state: tiers its RouterPolicy does not define."""
        policy, policy_problems = self.policy()
        given = bool(self.of_kind("RouterPolicy")) and not policy_problems
        out = []
        for res in self.of_kind("Worker"):
            spec: WorkerSpec = res.spec
            problems = list(policy_problems)
            if spec.worker_kind == "llm":
                for tier in spec.served_tiers:
                    try:
                        worker_tier(policy if given else None, tier)
                    except KeyError:
                        problems.append(f"tier {tier!r} is not defined by the RouterPolicy")
            out.append(WorkerEntry(res, problems))
        return sorted(out, key=lambda w: w.name)

    def worker(self, name: str) -> WorkerEntry:
        for entry in self.workers():
            if entry.name == name:
                return entry
        raise KeyError(name)

    def tiers(self) -> list[str]:
        """Tiers a test can run on: the RouterPolicy's (the default policy's when there is none)."""
        return list(self.policy()[0].tier_names)

    def relative(self, source: str) -> str:
        return str(Path(source).resolve().relative_to(self.root))


class Project:
    """The folder and the manifest paths given to ``loom workshop``."""

    def __init__(self, root: Path, paths: Sequence[str | Path] = ()):
        self.root = root.resolve()
        self.paths = [confine(self.root, p) for p in (paths or [self.root])]

    def files(self) -> list[Path]:
        """YAML files of the given paths; inside a folder, hidden folders (``.venv``, ``.git``, the
        Workshop's own ``.loom`` of saved versions) and ``node_modules`` are not searched."""
        out = []
        for given in self.paths:
            for f in expand_paths([given]):
                path = confine(self.root, f)
                inside = path.relative_to(given).parts[:-1] if path != given else ()
                if not any(p.startswith(".") or p == "node_modules" for p in inside):
                    out.append(path)
        return out

    def load(self) -> Snapshot:
        """Load every file now (the Workshop always shows the files as they are on disk)."""
        resources: list[Resource] = []
        broken: dict[str, list[str]] = {}
        for path in self.files():
            try:
                text = path.read_text(encoding="utf-8")
                if not is_loom_file(text):
                    continue
                resources += load_text(text, str(path))
            except LoadError as exc:
                broken[str(path.relative_to(self.root))] = exc.problems
            except OSError as exc:
                broken[str(path.relative_to(self.root))] = [f"cannot read: {exc.strerror or exc}"]
        return Snapshot(self.root, resources, broken)

    def read(self, rel: str | Path) -> str:
        return confine(self.root, rel).read_text(encoding="utf-8")
