"""values.schema.json: helm itself refuses bad values, with a message naming the field."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support import chart, helm_bin

SCHEMA = json.loads((chart.CHART / "values.schema.json").read_text())
DEFAULTS = yaml.safe_load((chart.CHART / "values.yaml").read_text())

BAD_VALUES: list[tuple[str, dict[str, Any], str]] = [
    ("unknown top-level key", {"replicas": 3}, "replicas"),
    ("unknown operator key", {"operator": {"replicaCount": 2}}, "replicaCount"),
    ("keda mode", {"operator": {"keda": "maybe"}}, "keda"),
    ("digest format", {"image": {"digest": "sha256:abc"}}, "digest"),
    ("namespace name", {"watchNamespaces": ["Team_A"]}, "watchNamespaces"),
    ("duplicate namespaces", {"watchNamespaces": ["a", "a"]}, "watchNamespaces"),
    ("metrics port", {"operator": {"metricsPort": 70000}}, "metricsPort"),
    ("nats url scheme", {"nats": {"url": "http://nats:4222"}}, "url"),
    ("nats size", {"nats": {"bundled": {"jetstream": {"maxFileStore": "lots"}}}}, "maxFileStore"),
    ("pvc size", {"nats": {"bundled": {"persistence": {"size": "ten gigs"}}}}, "size"),
    ("pull policy", {"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    ("alert duration", {"monitoring": {"prometheusRule": {"consumerLag": {"for": "ten minutes"}}}}, "for"),
    ("lag threshold", {"monitoring": {"prometheusRule": {"consumerLag": {"threshold": 0}}}}, "threshold"),
    ("severity", {"monitoring": {"prometheusRule": {"circuitOpen": {"severity": "page"}}}}, "severity"),
    ("scaler interval", {"operator": {"scalerIntervalSeconds": 0}}, "scalerIntervalSeconds"),
    ("pdb", {"podDisruptionBudget": {"maxUnavailable": "half"}}, "maxUnavailable"),
    ("standby flag type", {"operator": {"standby": {"enabled": "yes"}}}, "enabled"),
    ("env name", {"operator": {"extraEnv": [{"name": "1BAD", "value": "x"}]}}, "extraEnv"),
    ("routerPolicy spec type", {"routerPolicy": {"spec": "tiers: []"}}, "spec"),
]


@pytest.fixture(scope="module", autouse=True)
def _helm() -> None:
    try:
        helm_bin.helm()
    except helm_bin.ToolUnavailable as exc:
        pytest.fail(str(exc))


@pytest.mark.parametrize(("values", "field"), [pytest.param(v, f, id=i) for i, v, f in BAD_VALUES])
def test_helm_rejects_bad_values(values: dict[str, Any], field: str, tmp_path: Path) -> None:
    with pytest.raises(chart.HelmFailed) as err:
        chart.template_text(values, tmp_path)
    message = str(err.value)
    assert "schema" in message, message
    assert field in message, message


def test_helm_lint_fails_on_bad_values(tmp_path: Path) -> None:
    proc = chart.run_helm(
        [
            "lint",
            str(chart.CHART),
            "-f",
            str(chart.values_file({"operator": {"keda": "sometimes"}}, tmp_path)),
        ]
    )
    assert proc.returncode != 0
    assert "keda" in proc.stdout + proc.stderr


def test_defaults_and_every_value_set_satisfy_the_schema() -> None:
    validator = jsonschema.Draft7Validator(SCHEMA)
    validator.validate(DEFAULTS)
    for values in chart.VALUE_SETS.values():
        merged = _merge(DEFAULTS, values)
        validator.validate(merged)


def test_every_default_key_is_described_by_the_schema() -> None:
    """additionalProperties: false everywhere a key is known, so a typo never passes silently."""

    def walk(values: Any, schema: dict[str, Any], path: str) -> None:
        if not isinstance(values, dict) or schema.get("type") != "object" or "properties" not in schema:
            return
        assert schema.get("additionalProperties") is False, f"{path or '<root>'} accepts unknown keys"
        for key, value in values.items():
            assert key in schema["properties"], f"{path}.{key} missing from values.schema.json"
            walk(value, schema["properties"][key], f"{path}.{key}")

    walk(DEFAULTS, SCHEMA, "")


def _merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        return {k: _merge(base.get(k), override[k]) if k in override else base[k] for k in base | override}
    return override


LATEST = {
    "image": {"image": {"tag": "latest"}},
    "nats.bundled.image": {"nats": {"bundled": {"enabled": True, "image": {"tag": "latest"}}}},
}


@pytest.mark.parametrize("path", sorted(LATEST))
def test_latest_tag_is_refused_saying_what_to_do(path: str, tmp_path: Path) -> None:
    values = copy.deepcopy(LATEST[path])
    with pytest.raises(chart.HelmFailed) as err:
        chart.template_text(values, tmp_path)
    message = str(err.value)
    assert f"{path}.tag=latest" in message and "pin a version" in message, message
    assert f"set {path}.digest" in message and "'not' failed" not in message
    # A digest pins the image whatever the tag says.
    section = values["image"] if path == "image" else values["nats"]["bundled"]["image"]
    section["digest"] = "sha256:" + "a" * 64
    chart.template_text(values, tmp_path)
