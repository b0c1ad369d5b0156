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
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, NoDefault
from pydantic_core import PydanticUndefined, core_schema

from loom.api.common import API_GROUP, API_VERSION, WorkerType
from loom.api.kinds import KINDS, KindInfo, kind_info
from loom.api.names import MAX_NAME_LENGTH, NAME_PATTERN
from loom.api.pipeline import RESERVED_PIPELINE_NAMES

REPO_ROOT = Path(__file__).resolve().parents[2]
OUTPUT_DIRS = (REPO_ROOT / "crds", REPO_ROOT / "helm" / "loom" / "crds")
COMMAND = "python -m loom_operator.crdgen"


def _ready_column() -> dict[str, Any]:
    return {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
        "description": "Whether all children are available at their desired size.",
    }


_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def columns(info: KindInfo) -> list[dict[str, Any]]:
    """``kubectl get`` columns: Ready, the kind's own, Age."""
    return [_ready_column(), *info.columns, _AGE]


def name_rules(kind: str, use: str) -> list[dict[str, str]]:
    """CEL rules on ``metadata.name`` of a kind (from ``loom.api.names``), with messages that say why.

    Every child is named ``<name>-<suffix>`` and labelled with the name, so the name is a
    DNS-1035 label short enough for the longest child name. Where ``spec.name`` is unset the
    name is also the worker type or pipeline name, with those rules.
    """
    limit = MAX_NAME_LENGTH[kind]
    rules = [
        {
            "rule": f"size(self.metadata.name) <= {limit} && "
            f"self.metadata.name.matches({json.dumps(NAME_PATTERN)})",
            "message": f"metadata.name must be at most {limit} characters of a-z, 0-9 and '-', start with a "
            f"letter and end with a letter or digit: it becomes {use}",
        }
    ]
    if kind == "Worker":
        types = _max_length(WorkerType)
        if types < limit:
            rules.append(
                {
                    "rule": f"has(self.spec.name) || size(self.metadata.name) <= {types}",
                    "message": f"metadata.name must be at most {types} characters unless spec.name is set: "
                    "it is the worker type (NATS subjects, consumers worker-<type>-<tier>)",
                }
            )
    if kind == "Pipeline":
        reserved = sorted(RESERVED_PIPELINE_NAMES)
        rules.append(
            {
                "rule": f"has(self.spec.name) || !(self.metadata.name in {json.dumps(reserved)})",
                "message": f"metadata.name must not be {' or '.join(repr(r) for r in reserved)} unless "
                "spec.name is set: it is the pipeline name, and loom.goals.incoming is the goal "
                "orchestrator's subject",
            }
        )
    return rules


def _max_length(annotated: Any) -> int:
    """The ``max_length`` of an ``Annotated[str, Field(...)]`` type."""
    for meta in getattr(annotated, "__metadata__", ()):
        for item in getattr(meta, "metadata", ()):
            if hasattr(item, "max_length"):
                return int(item.max_length)
    raise SchemaError(f"{annotated} has no max_length")


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


def structural(schema: dict[str, Any], *, notes: bool = True) -> dict[str, Any]:
    """A structural OpenAPI v3 schema from a pydantic JSON Schema (``$defs`` inlined).

    ``notes`` appends defaults and bounds to descriptions (for spec; status has neither).
    """
    return _convert(schema, schema.get("$defs", {}), "", notes)


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline ``$ref``/single ``allOf``/``Optional`` so one concrete schema remains; outer keys win."""
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").rsplit("/", 1)[-1]])
        node = {**target, **node}
    if "allOf" in node and len(node["allOf"]) == 1:
        node = {**_resolve(node.pop("allOf")[0], defs), **node}
    if "oneOf" in node and "discriminator" in node:
        node = {**_merge_tagged(node.pop("oneOf"), node.pop("discriminator"), defs), **node}
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise SchemaError(f"union of {len(options)} types is not structural: {options}")
        node = {**_resolve(options[0], defs), **node}
        if node.get("default", 0) is None:
            del node["default"]
    return node


def _merge_tagged(options: list[dict[str, Any]], discriminator: dict[str, Any], defs: dict[str, Any]) -> dict:
    """A tagged union (pydantic's discriminated ``oneOf``) as one structural object.

    A structural schema has one set of properties, so the members' properties are merged; the tag
    becomes an enum, and CEL rules put back what the merge loses: each member's own required fields
    and the fields only some members have (so ``{type: exact, rubric: ...}`` is refused by the API
    server as it is by the model).
    """
    tag = discriminator["propertyName"]
    members = [_resolve(o, defs) for o in options]
    props: dict[str, Any] = {}
    owners: dict[str, list[str]] = {}
    values: list[str] = []
    required: list[set[str]] = []
    for member in members:
        value = member["properties"][tag]["const"]
        values.append(value)
        required.append(set(member.get("required", [])) - {tag})
        for name, schema in member["properties"].items():
            if name == tag:
                continue
            if name in props and _resolve(schema, defs).get("type") != _resolve(props[name], defs).get(
                "type"
            ):
                raise SchemaError(f"union members disagree on the type of {name!r}")
            props.setdefault(name, schema)
            owners.setdefault(name, []).append(value)
    rules = [
        {
            "rule": f"self.{tag} != {json.dumps(value)} || has(self.{name})",
            "message": f"{tag} {value} needs {name}",
        }
        for value, need in zip(values, required, strict=True)
        for name in sorted(need)
    ]
    for name, have in owners.items():
        if len(have) < len(values):
            # A default would put the field on every member (and the rule below would refuse it):
            # the model applies a member's own defaults.
            props[name] = {k: v for k, v in _resolve(props[name], defs).items() if k != "default"}
            rules.append(
                {
                    "rule": f"!has(self.{name}) || self.{tag} in {json.dumps(have)}",
                    "message": f"{name} is a field of {tag} {' or '.join(have)} only",
                }
            )
    return {
        "type": "object",
        "properties": {
            tag: {"type": "string", "enum": values, "description": f"One of {', '.join(values)}."},
            **props,
        },
        "required": [tag],
        "x-kubernetes-validations": rules,
    }


def _convert(node: dict[str, Any], defs: dict[str, Any], path: str, notes: bool) -> dict[str, Any]:
    node = _resolve(node, defs)
    out: dict[str, Any] = {}
    rules = list(node.get("x-kubernetes-validations", []))
    key_rules: list[str] = []
    key_words: list[str] = []
    for key, value in node.items():
        if key in _DROP or key == "x-kubernetes-validations":
            continue
        if key == "properties":
            out["properties"] = {k: _convert(v, defs, f"{path}.{k}", notes) for k, v in value.items()}
        elif key == "items":
            out["items"] = _convert(value, defs, f"{path}[]", notes)
        elif key == "additionalProperties":
            if value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif isinstance(value, dict):
                out["additionalProperties"] = _convert(value, defs, f"{path}{{}}", notes)
            # False (extra="forbid") is what pruning already does.
        elif key == "patternProperties":
            # Map keys with a pattern: the values' schema, and a CEL rule on the keys.
            ((pattern, values),) = value.items()
            out["additionalProperties"] = _convert(values, defs, f"{path}{{}}", notes)
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
    if notes and "description" in out:
        out["description"] = _with_bounds(out)
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


def _with_bounds(node: dict[str, Any]) -> str:
    """The description plus default and bounds: ``kubectl explain`` shows only descriptions."""
    notes = []
    default = node.get("default")
    if "default" in node and default not in ("", [], {}):
        text = json.dumps(default, separators=(",", ":"))
        if len(text) <= 60:
            notes.append(f"Default: {text}.")
    low, high = node.get("minimum"), node.get("maximum")
    if low is not None or high is not None:
        lo = "" if low is None else f"{'>' if node.get('exclusiveMinimum') else '>='} {low}"
        hi = "" if high is None else f"{'<' if node.get('exclusiveMaximum') else '<='} {high}"
        notes.append(f"Range: {', '.join(x for x in (lo, hi) if x)}.")
    if "maxLength" in node:
        notes.append(f"At most {node['maxLength']} characters.")
    if "maxItems" in node:
        notes.append(f"At most {node['maxItems']} items.")
    description = str(node["description"])
    if not notes:
        return description
    return f"{description.rstrip()}{'' if description.rstrip().endswith('.') else '.'} {' '.join(notes)}"


def model_schema(model: type[BaseModel], *, notes: bool = True) -> dict[str, Any]:
    """The structural schema of one pydantic model (camelCase, validation mode)."""
    return structural(model.model_json_schema(by_alias=True, schema_generator=_FactoryDefaults), notes=notes)


def status_schema(kind: str) -> dict[str, Any]:
    """The status schema: conditions as a list-map keyed by type; Kopf's bookkeeping kept as is."""
    schema = model_schema(kind_info(kind).status_model, notes=False)
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
                    "additionalPrinterColumns": columns(info),
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": info.description,
                            "required": ["spec"],
                            "x-kubernetes-validations": name_rules(info.kind, info.name_use),
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
