"""Load specs from plain YAML (the original Loom's files) or custom-resource manifests.

A file may hold several YAML documents. Every problem in every document is
collected, named by file, kind, resource and field path, so ``loom validate``
can print them all at once.
"""

from __future__ import annotations

import difflib
import importlib
import types
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.alias_generators import to_camel, to_snake

from loom.api.common import GROUP_VERSION
from loom.api.kinds import KINDS, KindName
from loom.api.names import object_name
from loom.api.pipeline import PipelineSpec
from loom.api.router_policy import RouterPolicySpec
from loom.api.schedule import ScheduleSpec
from loom.api.worker import WorkerSpec

Kind = KindName
AnySpec: TypeAlias = WorkerSpec | PipelineSpec | RouterPolicySpec | ScheduleSpec

SPEC_MODELS: dict[str, type[AnySpec]] = {k.kind: k.spec_model for k in KINDS}  # type: ignore[misc]
#: Kinds whose spec carries a ``name`` defaulted from ``metadata.name``.
_NAMED = {k.kind for k in KINDS if k.named}


@dataclass
class Resource:
    """One loaded resource: its kind, names and validated spec."""

    kind: str
    name: str
    spec: Any
    namespace: str | None = None
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    is_manifest: bool = False

    def manifest(self, namespace: str | None = None) -> dict[str, Any]:
        """The custom-resource manifest for this resource."""
        meta: dict[str, Any] = {"name": self.name}
        if namespace or self.namespace:
            meta["namespace"] = namespace or self.namespace
        return {
            "apiVersion": GROUP_VERSION,
            "kind": self.kind,
            "metadata": meta,
            "spec": self.spec.to_manifest_dict(),
        }


class LoadError(Exception):
    """Every problem found while loading, each naming its file, resource and field."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def format_validation_error(
    exc: ValidationError, prefix: str, model: type[BaseModel] | None = None
) -> list[str]:
    """Pydantic errors as ``prefix.field.path: message`` lines (camelCase field names), each once.

    With ``model``, an unknown key is reported as such, with the closest known key when one is near.
    """
    lines: list[str] = []
    for err in exc.errors():
        parts = [p for p in err["loc"] if p != "__root__"]
        if err["type"] == "extra_forbidden" and parts:
            key = str(parts[-1])
            parent = ".".join(str(p) for p in parts[:-1])
            where = f"{prefix}.{parent}" if parent else prefix
            msg = f"unknown key {key!r}{did_you_mean(key, _known_keys(model, parts[:-1]))}"
        else:
            loc = ".".join(str(p) for p in parts)
            where = f"{prefix}.{loc}" if loc else prefix
            msg = err["msg"].removeprefix("Value error, ")
        line = f"{where}: {msg}"
        if line not in lines:
            lines.append(line)
    return lines


def did_you_mean(key: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the known key closest to ``key``, or ``''``."""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _known_keys(model: type[BaseModel] | None, loc: list[int | str]) -> list[str]:
    """The keys a nested model accepts at ``loc`` (both spellings), following fields, lists and dicts."""
    node: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(node, type) and issubclass(node, BaseModel)):
            return []
        field = next(
            (f for name, f in node.model_fields.items() if part in (name, f.alias, to_camel(name))), None
        )
        if field is None:
            return []
        node = _inner_model(field.annotation)
    if not (isinstance(node, type) and issubclass(node, BaseModel)):
        return []
    return sorted({k for name, f in node.model_fields.items() for k in (name, f.alias or to_camel(name))})


def _inner_model(annotation: Any) -> Any:
    """The model inside ``X | None``, ``list[X]`` or ``dict[str, X]`` (or the annotation itself)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, dict, tuple):
        for arg in reversed(typing.get_args(annotation)):
            inner = _inner_model(arg)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return annotation


#: What each config kind that is not a custom resource is, and the command that reads it.
OTHER_CONFIGS: dict[str, tuple[str, str]] = {
    "RouterConfig": ("a router config (policy and worker catalog)", "loom router --config FILE"),
    "Orchestrator": ("a goal orchestrator config", "loom orchestrator --config FILE"),
    "MCPGateway": ("an MCP gateway config", "loom mcp --config FILE"),
}
#: What an empty file (or one of comments only) is told.
EMPTY = (
    "empty: no YAML document to read (expected a Worker, Pipeline, RouterPolicy or Schedule, "
    "or a router, orchestrator or MCP gateway config)"
)


def _own_keys(model: type[BaseModel], *, besides: type[BaseModel]) -> frozenset[str]:
    """The fields of ``model`` that ``besides`` lacks, in both spellings."""
    own = set(model.model_fields) - set(besides.model_fields)
    return frozenset(own | {to_camel(k) for k in own})


#: Keys that mark a plain RouterPolicy file (``tiers`` too, when no Worker key is present).
_POLICY_KEYS = _own_keys(RouterPolicySpec, besides=WorkerSpec) | {"tiers"}

#: Top-level keys of a custom-resource manifest.
MANIFEST_KEYS = ("apiVersion", "kind", "metadata", "spec", "status")


def infer_kind(doc: dict[str, Any]) -> str:
    """The kind of a config document: a manifest's ``kind``, else by its characteristic keys.

    One of :data:`SPEC_MODELS` or :data:`OTHER_CONFIGS`; a document that shows no kind's keys is
    read as a Worker (the original's commonest file), so its problems are named as a Worker's.
    """
    if isinstance(doc.get("kind"), str):
        return str(doc["kind"])
    keys = set(doc)
    if "apiVersion" not in keys and ("policy" in keys or isinstance(doc.get("workers"), dict)):
        return "RouterConfig"
    if (
        "tools" in keys
        or "nats_url" in keys
        or (isinstance(doc.get("resources"), dict) and "workspace_dir" in doc["resources"])
    ):
        return "MCPGateway"
    if "decomposer" in keys or isinstance(doc.get("workers"), list):
        return "Orchestrator"
    if "cases" in keys and keys & {"worker", "scorers"}:
        return "EvalSuite"  # a plain suite file, as `loom eval` reads it
    if keys & {"pipeline_stages", "pipelineStages"}:
        return "Pipeline"
    if keys & {"cron", "interval_seconds", "intervalSeconds", "dispatch_type", "dispatchType", "schedules"}:
        return "Schedule"
    if keys & _POLICY_KEYS and not (
        keys & {"system_prompt", "systemPrompt", "processing_backend", "processingBackend", "worker_kind"}
    ):
        return "RouterPolicy"
    return "Worker"


def parse_document(doc: Any, source: str, index: int) -> list[Resource]:
    """Validate one YAML document into resources (a scheduler file with ``schedules:`` yields several)."""
    where = f"{source}[{index}]" if index else source
    if not isinstance(doc, dict):
        raise LoadError([f"{where}: expected a mapping, got {type(doc).__name__}"])
    if "apiVersion" in doc:
        return [_parse_manifest(doc, where, source)]
    if isinstance(doc.get("schedules"), list):
        schedules = enumerate(doc["schedules"])
        return _parse_each(({"kind": "Schedule", **e}, f"{where}.schedules[{i}]", 0) for i, e in schedules)
    kind = infer_kind(doc)
    if kind in OTHER_CONFIGS:
        what, command = OTHER_CONFIGS[kind]
        raise LoadError(
            [f"{where}: this is {what}, not a {', '.join(SPEC_MODELS)} resource; it is read by `{command}`"]
        )
    body = {k: v for k, v in doc.items() if k != "kind"}
    return [_validate(kind, body, None, where, source, {}, is_manifest=False)]


def _parse_manifest(doc: dict[str, Any], where: str, source: str) -> Resource:
    problems = [
        f"{where}: unknown key {k!r}{did_you_mean(str(k), MANIFEST_KEYS)}"
        for k in doc
        if k not in MANIFEST_KEYS
    ]
    if doc.get("apiVersion") != GROUP_VERSION:
        problems.append(f"{where}: apiVersion must be {GROUP_VERSION}, got {doc.get('apiVersion')!r}")
    kind = doc.get("kind")
    if kind not in SPEC_MODELS:
        problems.append(f"{where}: kind must be one of {', '.join(SPEC_MODELS)}, got {kind!r}")
    metadata = doc.get("metadata") or {}
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not name:
        problems.append(f"{where}: metadata.name is required")
    spec = doc.get("spec")
    if "spec" not in doc:
        problems.append(f"{where}: spec is required")
    elif not isinstance(spec, dict):
        problems.append(f"{where}: spec must be a mapping")
    if problems:
        raise LoadError(problems)
    assert isinstance(kind, str) and isinstance(spec, dict) and isinstance(name, str)
    return _validate(kind, spec, name, f"{where}: {kind}/{name}", source, metadata, is_manifest=True)


def _validate(
    kind: str,
    body: dict[str, Any],
    meta_name: str | None,
    where: str,
    source: str,
    metadata: dict[str, Any],
    *,
    is_manifest: bool,
) -> Resource:
    model = SPEC_MODELS.get(kind)
    if model is None:
        raise LoadError([f"{where}: unknown kind {kind!r} (expected {', '.join(SPEC_MODELS)})"])
    if kind in _NAMED and meta_name and not body.get("name"):
        body = {**body, "name": meta_name}
    prefix = "spec" if is_manifest else kind
    try:
        spec = model.model_validate(body)
    except ValidationError as exc:
        lines = format_validation_error(exc, prefix, model)
        lines += [line for line in _cross_field_problems(model, body, exc, prefix) if line not in lines]
        raise LoadError([f"{where}: {line}" for line in lines]) from None
    # a plain file's name is a worker type or pipeline name (``entity_extractor``): kept as such,
    # while the objects made from it get a valid name
    name = meta_name or object_name(getattr(spec, "name", None) or Path(source).stem, kind)
    return Resource(
        kind=kind,
        name=name,
        spec=spec,
        namespace=metadata.get("namespace"),
        source=source,
        metadata=dict(metadata),
        is_manifest=is_manifest,
    )


def _cross_field_problems(
    model: type[AnySpec], body: dict[str, Any], exc: ValidationError, prefix: str
) -> list[str]:
    """Model-level problems hidden by field errors (pydantic skips ``after`` validators when a field fails).

    Validates again without the failing top-level fields and keeps only the model-level errors,
    so one run of ``loom validate`` names every problem.
    """
    bad = {str(err["loc"][0]) for err in exc.errors() if err["loc"]}
    if not bad:
        return []
    try:
        model.model_validate({k: v for k, v in body.items() if k not in bad})
    except ValidationError as again:
        # a rule about a field that was dropped for failing would be a false report ("needs X" when X is bad)
        names = {n for b in bad for n in (to_camel(b), to_snake(b))}
        out = []
        for err in again.errors():
            if err["loc"]:
                continue
            parts = [
                p
                for p in str(err["msg"]).removeprefix("Value error, ").split("; ")
                if not any(n in p for n in names)
            ]
            if parts:
                out.append(f"{prefix}: {'; '.join(parts)}")
        return out
    return []


def load_text(text: str, source: str = "<string>") -> list[Resource]:
    """Load every document in a YAML string; raises LoadError with all problems."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise LoadError([f"{source}: invalid YAML: {exc}"]) from None
    if not docs:
        raise LoadError([f"{source}: {EMPTY}"])
    return _parse_each((doc, source, i) for i, doc in enumerate(docs))


def _parse_each(docs: Iterable[tuple[Any, str, int]]) -> list[Resource]:
    """The resources of every (document, source, index); one LoadError listing the problems of all."""
    resources: list[Resource] = []
    problems: list[str] = []
    for doc, source, index in docs:
        try:
            resources += parse_document(doc, source, index)
        except LoadError as exc:
            problems += exc.problems
    if problems:
        raise LoadError(problems)
    return resources


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files named directly, plus ``*.yaml``/``*.yml`` files inside named directories (sorted).

    Hidden files and folders inside a named directory (``.git``, ``.github`` workflows, the
    Workshop's ``.loom`` state) are skipped: they are not manifests, and reading them would load a
    kept copy of a worker twice.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(
                q
                for q in p.rglob("*")
                if q.suffix in (".yaml", ".yml")
                and q.is_file()
                and not any(part.startswith(".") for part in q.relative_to(p).parts)
            )
        else:
            out.append(p)
    return out


def read_files(paths: Iterable[str | Path], problems: list[str]) -> Iterator[tuple[Path, str]]:
    """(path, text) of every file ``expand_paths`` names; unreadable ones go to ``problems``."""
    for path in expand_paths(paths):
        try:
            yield path, path.read_text(encoding="utf-8")
        except OSError as exc:
            problems.append(f"{path}: cannot read: {exc.strerror or exc}")


def load_paths(paths: Iterable[str | Path]) -> list[Resource]:
    """Load files and directories; raises LoadError listing every problem in every file."""
    resources: list[Resource] = []
    problems: list[str] = []
    for path, text in read_files(paths, problems):
        try:
            resources += load_text(text, str(path))
        except LoadError as exc:
            problems += exc.problems
    if problems:
        raise LoadError(problems)
    return resources


def load_one(path: str | Path, kind: str) -> Resource:
    """Load exactly one resource of ``kind`` from a file (what ``loom worker --config`` needs)."""
    found = [r for r in load_paths([path]) if r.kind == kind]
    if len(found) != 1:
        raise LoadError([f"{path}: expected exactly one {kind}, found {len(found)}"])
    return found[0]


def import_object(path: str) -> Any:
    """Import ``package.module.Name``; errors say which part was not found."""
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ImportError(f"{path!r} is not a class path (package.module.Name)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"cannot import module {module_name!r} for {path!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ImportError(f"module {module_name!r} has no attribute {attr!r}") from None


def resolve_schema_refs(spec: WorkerSpec) -> WorkerSpec:
    """Replace ``*_schema_ref`` (pydantic model paths) by their JSON Schemas, at load time."""
    updates: dict[str, Any] = {}
    for ref_field, schema_field in (
        ("input_schema_ref", "input_schema"),
        ("output_schema_ref", "output_schema"),
    ):
        ref = getattr(spec, ref_field)
        if ref:
            model = import_object(ref)
            if not hasattr(model, "model_json_schema"):
                raise TypeError(f"{ref_field} {ref!r} is not a pydantic model")
            updates[schema_field] = model.model_json_schema()
            updates[ref_field] = None
    return spec.model_copy(update=updates) if updates else spec
