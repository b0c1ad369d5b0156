"""``loom new``: answers about a worker or pipeline turned into its YAML (pure: no prompts, no files).

Plain Loom YAML (the original's snake_case files) by default, or a
``loom.dev/v1alpha1`` manifest that ``kubectl apply`` takes. Either way the text
loads with :func:`loom.api.load_text` and passes ``loom validate``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml
from pydantic.alias_generators import to_camel

from loom.api.common import GROUP_VERSION
from loom.api.names import object_name

FIELD_TYPES = ("string", "integer", "number", "boolean", "array", "object")
_FIELD_RE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*(:\s*(?P<type>[a-z]+))?\s*(?P<optional>\?)?$")


@dataclass(frozen=True)
class FieldDef:
    """One property of an input or output schema."""

    name: str
    type: str = "string"
    required: bool = True


def parse_fields(text: str) -> list[FieldDef]:
    """``"text:string, count:integer, notes?"`` -> fields (type defaults to string; ``?`` = optional)."""
    fields: list[FieldDef] = []
    for raw in filter(None, (p.strip() for p in text.split(","))):
        m = _FIELD_RE.match(raw)
        if not m:
            raise ValueError(f"field {raw!r}: expected name[:type][?], e.g. text:string or notes:string?")
        ftype = m.group("type") or "string"
        if ftype not in FIELD_TYPES:
            raise ValueError(f"field {raw!r}: type must be one of {', '.join(FIELD_TYPES)}")
        if any(f.name == m.group("name") for f in fields):
            raise ValueError(f"field {m.group('name')!r} is given twice")
        fields.append(FieldDef(m.group("name"), ftype, m.group("optional") is None))
    return fields


def object_schema(fields: list[FieldDef]) -> dict[str, Any]:
    """A JSON Schema object with one property per field."""
    props: dict[str, Any] = {}
    for f in fields:
        prop: dict[str, Any] = {"type": f.type}
        if f.type == "array":
            prop["items"] = {"type": "string"}
        elif f.type == "string" and f.required:
            prop["minLength"] = 1
        props[f.name] = prop
    schema: dict[str, Any] = {"type": "object"}
    required = [f.name for f in fields if f.required]
    if required:
        schema["required"] = required
    schema["properties"] = props
    return schema


@dataclass
class WorkerAnswers:
    """Everything ``loom new worker`` asks."""

    name: str
    kind: Literal["llm", "processor"] = "llm"
    description: str = ""
    system_prompt: str | None = None
    processing_backend: str | None = None
    tier: str = "local"
    inputs: list[FieldDef] = field(default_factory=lambda: [FieldDef("text")])
    outputs: list[FieldDef] = field(default_factory=lambda: [FieldDef("result")])
    timeout_seconds: float = 60
    max_output_tokens: int = 1000


_EXAMPLE = {
    "string": '"..."', "integer": "0", "number": "0.0", "boolean": "true", "array": "[]", "object": "{}",
}


def default_system_prompt(a: WorkerAnswers) -> str:
    """A starting prompt in the original template's shape: role, input format, output format, rules."""
    intro = f"You are the {a.name} worker. {a.description}".strip()
    lines = [intro, "", "INPUT FORMAT:", "You will receive a JSON object:"]
    lines += [f"- {f.name} ({f.type}{'' if f.required else ', optional'})" for f in a.inputs]
    lines += ["", "OUTPUT FORMAT:", "Respond with ONLY a JSON object:", "{"]
    lines += [f'  "{f.name}": {_EXAMPLE[f.type]}{"," if i < len(a.outputs) - 1 else ""}'
              for i, f in enumerate(a.outputs)]
    lines += ["}", "", "RULES:", "- Never output anything except the JSON object"]
    return "\n".join(lines) + "\n"


def worker_document(a: WorkerAnswers) -> dict[str, Any]:
    """The worker as plain Loom YAML (snake_case, the original's field order)."""
    doc: dict[str, Any] = {"name": a.name}
    if a.description:
        doc["description"] = a.description
    doc["worker_kind"] = a.kind
    if a.kind == "llm":
        doc["system_prompt"] = a.system_prompt or default_system_prompt(a)
    else:
        if not a.processing_backend:
            raise ValueError("a processor worker needs a processing backend (a class path: pkg.mod.Backend)")
        doc["processing_backend"] = a.processing_backend
        doc["backend_config"] = {}
    doc["input_schema"] = object_schema(a.inputs)
    doc["output_schema"] = object_schema(a.outputs)
    doc["default_model_tier"] = a.tier
    if a.kind == "llm":
        doc["max_output_tokens"] = a.max_output_tokens
    doc["reset_after_task"] = True
    doc["timeout_seconds"] = _number(a.timeout_seconds)
    return doc


@dataclass
class StageAnswers:
    """One pipeline stage."""

    name: str
    worker_type: str
    tier: str | None = None
    input_mapping: dict[str, str] = field(default_factory=dict)
    depends_on: list[str] | None = None
    condition: str | None = None


@dataclass
class PipelineAnswers:
    """Everything ``loom new pipeline`` asks."""

    name: str
    stages: list[StageAnswers]
    description: str = ""
    timeout_seconds: float = 300
    max_concurrent_goals: int = 4


def parse_mapping(text: str) -> dict[str, str]:
    """``"file_ref=goal.context.file_ref, text=extract.output.text"`` -> {field: path}."""
    out: dict[str, str] = {}
    for raw in filter(None, (p.strip() for p in text.split(","))):
        key, sep, path = (s.strip() for s in raw.partition("="))
        if not sep or not key or not path:
            raise ValueError(f"mapping {raw!r}: expected field=path, e.g. text=goal.context.text")
        out[key] = path
    return out


def parse_stage(text: str) -> StageAnswers:
    """``"extract=doc_extractor"`` or ``"extract=doc_extractor@local"`` -> a stage without mappings."""
    name, sep, rest = (s.strip() for s in text.partition("="))
    worker_type, _, tier = (s.strip() for s in rest.partition("@"))
    if not sep or not name or not worker_type:
        raise ValueError(f"stage {text!r}: expected name=worker_type[@tier], e.g. extract=extractor@local")
    return StageAnswers(name=name, worker_type=worker_type, tier=tier or None)


def default_mapping(stages: list[StageAnswers]) -> dict[str, str]:
    """What a new stage reads when nothing is said: the goal's text first, then the previous output."""
    return {"text": f"{stages[-1].name}.output.text" if stages else "goal.context.text"}


def pipeline_document(a: PipelineAnswers) -> dict[str, Any]:
    """The pipeline as plain Loom YAML."""
    doc: dict[str, Any] = {"name": a.name}
    if a.description:
        doc["description"] = a.description
    doc["timeout_seconds"] = _number(a.timeout_seconds)
    doc["max_concurrent_goals"] = a.max_concurrent_goals
    stages = []
    for s in a.stages:
        stage: dict[str, Any] = {"name": s.name, "worker_type": s.worker_type}
        if s.tier:
            stage["tier"] = s.tier
        stage["input_mapping"] = dict(s.input_mapping)
        if s.depends_on is not None:
            stage["depends_on"] = list(s.depends_on)
        if s.condition:
            stage["condition"] = s.condition
        stages.append(stage)
    doc["pipeline_stages"] = stages
    return doc


def manifest_name(name: str, kind: str = "Worker") -> str:
    """The Kubernetes object name for a Loom name (``loom.api.names.object_name``: ``_`` -> ``-``)."""
    return object_name(name, kind)


#: Keys whose values are user data (schemas, mappings, backend kwargs), kept verbatim in manifests.
_VERBATIM = {"input_schema", "output_schema", "input_mapping", "backend_config"}


def _camel(doc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if key in _VERBATIM:
            out[to_camel(key)] = value
        elif isinstance(value, dict):
            out[to_camel(key)] = _camel(value)
        elif isinstance(value, list):
            out[to_camel(key)] = [_camel(v) if isinstance(v, dict) else v for v in value]
        else:
            out[to_camel(key)] = value
    return out


def as_manifest(kind: str, doc: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
    """A plain document as a ``loom.dev/v1alpha1`` custom resource (spec in camelCase)."""
    spec = _camel(doc)
    meta: dict[str, Any] = {"name": manifest_name(doc["name"], kind)}
    if namespace:
        meta["namespace"] = namespace
    if meta["name"] == doc["name"]:
        spec.pop("name")  # the loader takes it from metadata.name
    return {"apiVersion": GROUP_VERSION, "kind": kind, "metadata": meta, "spec": spec}


class _Dumper(yaml.SafeDumper):
    """Block style, and multi-line strings (prompts) as ``|`` literals."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(doc: dict[str, Any], header: str) -> str:
    """YAML text with a comment header, keys in the given order."""
    body = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    return "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + body


def render_worker(a: WorkerAnswers, *, manifest: bool = False, namespace: str | None = None) -> str:
    """The worker's YAML file."""
    doc = worker_document(a)
    header = f"Loom worker {a.name} ({a.kind}). Check it with: loom validate <this file>"
    return to_yaml(as_manifest("Worker", doc, namespace) if manifest else doc, header)


def render_pipeline(a: PipelineAnswers, *, manifest: bool = False, namespace: str | None = None) -> str:
    """The pipeline's YAML file."""
    if not a.stages:
        raise ValueError("a pipeline needs at least one stage")
    doc = pipeline_document(a)
    header = (f"Loom pipeline {a.name}: goals on loom.goals.{a.name}. Stages run as soon as the stages\n"
              "their input_mapping reads from are done. Check it with: loom validate <this file>")
    return to_yaml(as_manifest("Pipeline", doc, namespace) if manifest else doc, header)


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value
