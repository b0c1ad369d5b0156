"""Generate the CustomResourceDefinitions from the pydantic spec models.

``python -m loom_operator.crdgen`` writes ``crds/<plural>.loom.dev.yaml`` and the same
files into ``helm/loom/crds/``. The JSON Schema pydantic emits is turned into a
*structural* OpenAPI v3 schema: ``$ref`` inlined, ``Optional[X]`` → X (the field is
simply omitted), ``default_factory`` values as defaults, free-form dicts as
``x-kubernetes-preserve-unknown-fields``, JSON Schema 2020 exclusive bounds as
OpenAPI 3.0 booleans, map key patterns as CEL rules, and the models' own CEL rules
(``x-kubernetes-validations``) kept. A test regenerates and diffs, so hand edits fail CI.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, NoDefault
from pydantic_core import PydanticUndefined, core_schema

from loom.api import PipelineSpec, RouterPolicySpec, ScheduleSpec, WorkerSpec
from loom.api.common import API_GROUP, API_VERSION
from loom_operator.status import STATUS_MODELS

REPO_ROOT = Path(__file__).resolve().parents[2]
OUTPUT_DIRS = (REPO_ROOT / "crds", REPO_ROOT / "helm" / "loom" / "crds")
COMMAND = "python -m loom_operator.crdgen"


@dataclass(frozen=True)
class KindInfo:
    """Names and ``kubectl get`` columns of one kind."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    spec_model: type[BaseModel]
    columns: tuple[dict[str, Any], ...]
    description: str


def _ready_column() -> dict[str, Any]:
    return {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
        "description": "Whether all children are available at their desired size.",
    }


_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}

KINDS: tuple[KindInfo, ...] = (
    KindInfo(
        "Worker",
        "workers",
        "worker",
        ("lw",),
        WorkerSpec,
        (
            _ready_column(),
            {
                "name": "Tiers",
                "type": "string",
                "jsonPath": ".status.tierNames",
                "description": "Served tiers.",
            },
            {
                "name": "Replicas",
                "type": "string",
                "jsonPath": ".status.replicaSummary",
                "description": "Ready/desired replicas over all tiers.",
            },
            {"name": "Lag", "type": "integer", "jsonPath": ".status.lag", "description": "Consumer lag."},
            _AGE,
        ),
        "A narrowly scoped, stateless LLM or processor worker type; one Deployment per model tier.",
    ),
    KindInfo(
        "Pipeline",
        "pipelines",
        "pipeline",
        ("lp",),
        PipelineSpec,
        (
            _ready_column(),
            {
                "name": "Stages",
                "type": "integer",
                "jsonPath": ".status.stages",
                "description": "Stage count.",
            },
            _AGE,
        ),
        "A multi-stage workflow over worker types, run by a pipeline orchestrator Deployment.",
    ),
    KindInfo(
        "RouterPolicy",
        "routerpolicies",
        "routerpolicy",
        ("lrp",),
        RouterPolicySpec,
        (
            _ready_column(),
            {
                "name": "Tiers",
                "type": "string",
                "jsonPath": ".status.tierNames",
                "description": "Defined tiers.",
            },
            _AGE,
        ),
        "Model tiers, tier overrides and rate limits for the router of a namespace.",
    ),
    KindInfo(
        "Schedule",
        "schedules",
        "schedule",
        ("lsc",),
        ScheduleSpec,
        (
            _ready_column(),
            {
                "name": "Schedule",
                "type": "string",
                "jsonPath": ".status.schedule",
                "description": "Cron or interval.",
            },
            {
                "name": "Last",
                "type": "date",
                "jsonPath": ".status.lastScheduleTime",
                "description": "Last fire.",
            },
            {
                "name": "Next",
                "type": "date",
                "jsonPath": ".status.nextScheduleTime",
                "description": "Next fire.",
            },
            _AGE,
        ),
        "Cron or fixed-interval dispatch of a goal or a task.",
    ),
)


class _FactoryDefaults(GenerateJsonSchema):
    """Also publish ``default_factory`` values (pydantic only publishes static defaults)."""

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            value = factory()  # type: ignore[call-arg]
            # A nested model's default is published in full: the API server checks defaults
            # against CEL rules before it applies nested field defaults.
            if isinstance(value, BaseModel):
                return value.model_dump(by_alias=True, exclude_none=True, mode="json")
            return value
        value = schema.get("default", NoDefault)
        return NoDefault if value is PydanticUndefined else value


class SchemaError(ValueError):
    """The model uses a construct a structural schema cannot express."""


_DROP = {"title", "examples", "$defs"}
_KEEP = {
    "type",
    "description",
    "default",
    "enum",
    "format",
    "required",
    "pattern",
    "nullable",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
}


def structural(schema: dict[str, Any]) -> dict[str, Any]:
    """A structural OpenAPI v3 schema from a pydantic JSON Schema (``$defs`` inlined)."""
    defs = schema.get("$defs", {})
    return _convert(schema, defs, "")


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline ``$ref``/single ``allOf``/``Optional`` so one concrete schema remains; outer keys win."""
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").rsplit("/", 1)[-1]])
        node = {**target, **node}
    if "allOf" in node and len(node["allOf"]) == 1:
        inner = _resolve(node.pop("allOf")[0], defs)
        node = {**inner, **node}
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise SchemaError(f"union of {len(options)} types is not structural: {options}")
        inner = _resolve(options[0], defs)
        node = {**inner, **node}
        if node.get("default", 0) is None:
            del node["default"]
    return node


def _convert(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    node = _resolve(node, defs)
    out: dict[str, Any] = {}
    rules = list(node.get("x-kubernetes-validations", []))
    key_rules: list[str] = []
    key_words: list[str] = []
    for key, value in node.items():
        if key in _DROP or key == "x-kubernetes-validations":
            continue
        if key == "properties":
            out["properties"] = {k: _convert(v, defs, f"{path}.{k}") for k, v in value.items()}
        elif key == "items":
            out["items"] = _convert(value, defs, f"{path}[]")
        elif key == "additionalProperties":
            if value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif isinstance(value, dict):
                out["additionalProperties"] = _convert(value, defs, f"{path}{{}}")
            # False (extra="forbid") is what pruning already does.
        elif key == "patternProperties":
            # Map keys with a pattern: the values' schema, and a CEL rule on the keys.
            ((pattern, values),) = value.items()
            out["additionalProperties"] = _convert(values, defs, f"{path}{{}}")
            key_rules.append(f"k.matches({json.dumps(pattern)})")
            key_words.append(f"match {pattern}")
        elif key == "propertyNames":
            if "maxLength" in value:
                key_rules.insert(0, f"size(k) <= {int(value['maxLength'])}")
                key_words.insert(0, f"be at most {value['maxLength']} characters")
            if "pattern" in value:
                key_rules.append(f"k.matches({json.dumps(value['pattern'])})")
                key_words.append(f"match {value['pattern']}")
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key in _KEEP:
            out[key] = value
        else:
            raise SchemaError(f"{path or '(root)'}: JSON Schema keyword {key!r} has no CRD equivalent")
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "type" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        raise SchemaError(f"{path or '(root)'}: no type in {node}")
    if "description" not in out and isinstance(out.get("items"), dict) and out["items"].get("description"):
        out["description"] = f"List; each item: {out['items']['description']}"
    if key_rules:
        rules.insert(
            0,
            {
                "rule": f"self.all(k, {' && '.join(key_rules)})",
                "message": f"keys must {' and '.join(key_words)}",
            },
        )
    if rules:
        out["x-kubernetes-validations"] = rules
    return out


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural schema of one pydantic model (camelCase, validation mode)."""
    return structural(model.model_json_schema(by_alias=True, schema_generator=_FactoryDefaults))


def status_schema(kind: str) -> dict[str, Any]:
    """The status schema: conditions as a list-map keyed by type; Kopf's bookkeeping kept as is."""
    schema = model_schema(STATUS_MODELS[kind])
    props = schema["properties"]
    props["conditions"]["x-kubernetes-list-type"] = "map"
    props["conditions"]["x-kubernetes-list-map-keys"] = ["type"]
    props["conditions"]["items"]["required"] = sorted({"type", "status"})
    for name in ("lastScheduleTime", "nextScheduleTime"):
        if name in props:
            props[name]["format"] = "date-time"
    # Status is written by the operator alone and read by kubectl: no defaults to apply.
    _strip_defaults(schema)
    return schema


def _strip_defaults(node: Any) -> None:
    if isinstance(node, dict):
        node.pop("default", None)
        for value in node.values():
            _strip_defaults(value)
    elif isinstance(node, list):
        for value in node:
            _strip_defaults(value)


def crd(info: KindInfo) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    spec = model_schema(info.spec_model)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{info.plural}.{API_GROUP}", "labels": {"app.kubernetes.io/name": "loom"}},
        "spec": {
            "group": API_GROUP,
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": list(info.short_names),
                "categories": ["loom"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": list(info.columns),
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": info.description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status_schema(info.kind),
                            },
                        }
                    },
                }
            ],
        },
    }


def render_file(info: KindInfo) -> str:
    """The YAML text of one CRD file, with its generated-file header."""
    header = f"# GENERATED by `{COMMAND}` from the pydantic models in runtime/loom/api. Do not edit.\n"
    return header + yaml.safe_dump(crd(info), sort_keys=False, width=120)


def file_name(info: KindInfo) -> str:
    return f"{info.plural}.{API_GROUP}.yaml"


def write_all(dirs: tuple[Path, ...] = OUTPUT_DIRS) -> list[Path]:
    """Write every CRD into every output directory; returns the written paths."""
    written = []
    for directory in dirs:
        directory.mkdir(parents=True, exist_ok=True)
        for info in KINDS:
            path = directory / file_name(info)
            path.write_text(render_file(info), encoding="utf-8")
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out",
        action="append",
        type=Path,
        help="output directory (repeatable; default crds/ and helm/loom/crds/)",
    )
    args = parser.parse_args(argv)
    for path in write_all(tuple(args.out) if args.out else OUTPUT_DIRS):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
