"""Pure parts of issue 13's fixes: canonical render, references, name rules, bounds, the diffbase digest."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from pydantic import ValidationError

from loom.api import PipelineSpec, ScheduleSpec, WorkerSpec, load_paths
from loom.api.common import TierName
from loom.api.loader import Resource
from loom.api.text import PROMPT_MAX_CHARS
from loom_operator import crdgen
from loom_operator.diffbase import DigestDiffBaseStorage
from loom_operator.dispatch import (
    PipelineEntry,
    Stalled,
    WorkerEntry,
    missing_references,
    parse_body,
    render_resource,
)
from loom_operator.render import Owner, worker_route
from loom_operator.settings import Settings

SETTINGS = Settings(image="example.org/loom:test", nats_url="nats://nats.loom:4222")


def _worker(name: str, **extra: Any) -> WorkerSpec:
    return WorkerSpec.model_validate(
        {"name": name, "systemPrompt": "Do it.", "tiers": ["local"], "defaultModelTier": "local", **extra}
    )


def _entry(name: str) -> WorkerEntry:
    spec = _worker(name)
    return WorkerEntry(name, name, worker_route(spec), ("local",), spec)


def _render(kind: str, spec: Any) -> list[dict[str, Any]]:
    resource = Resource(kind=kind, name=spec.name, spec=spec, namespace="ns")
    return render_resource(
        Owner(kind, spec.name, "ns"), resource, SETTINGS, keda=False, policies=[], workers=[], pipelines=[]
    )


# ------------------------------------------------------------------ canonical render


def test_render_does_not_depend_on_key_order_or_number_spelling() -> None:
    schema = {
        "type": "object",
        "properties": {"b": {"type": "number", "minimum": 0}, "a": {"type": "string"}},
    }
    reordered = {
        "properties": {"a": {"type": "string"}, "b": {"minimum": 0.0, "type": "number"}},
        "type": "object",
    }
    one = _render("Worker", _worker("w", inputSchema=schema, backendConfig={"z": 1, "y": 2}))
    two = _render("Worker", _worker("w", backendConfig={"y": 2, "z": 1.0}, inputSchema=reordered))
    assert one[0]["data"] == two[0]["data"]
    hashes = [
        [o["spec"]["template"]["metadata"]["annotations"] for o in r if o["kind"] == "Deployment"]
        for r in (one, two)
    ]
    assert hashes[0] == hashes[1]
    text = one[0]["data"]["worker.yaml"]
    assert text.index("apiVersion") < text.index("kind") < text.index("metadata") < text.index("spec")
    assert yaml.safe_load(text)["spec"]["inputSchema"] == json.loads(json.dumps(schema))


# ------------------------------------------------------------------ references


def test_missing_worker_types_and_pipelines_are_named() -> None:
    pipe = PipelineSpec.model_validate(
        {
            "name": "p",
            "pipelineStages": [{"name": "a", "workerType": "known"}, {"name": "b", "workerType": "gone"}],
        }
    )
    problem = missing_references(pipe, [_entry("known")], [])
    assert isinstance(problem, Stalled) and problem.reason == "UnknownWorkerType"
    assert "stage 'b' uses workerType 'gone'" in problem.message and "'a'" not in problem.message
    assert missing_references(pipe, [_entry("known"), _entry("gone")], []) is None

    goal = ScheduleSpec.model_validate({"name": "s", "cron": "0 * * * *", "goal": {"pipeline": "p"}})
    problem = missing_references(goal, [], [PipelineEntry("other", "other")])
    assert problem is not None and problem.reason == "UnknownPipeline" and "'p'" in problem.message
    assert missing_references(goal, [], [PipelineEntry("x", "p")]) is None
    to_orchestrator = ScheduleSpec.model_validate({"name": "s", "intervalSeconds": 5, "goal": {}})
    assert missing_references(to_orchestrator, [], []) is None
    task = ScheduleSpec.model_validate(
        {"name": "s", "intervalSeconds": 5, "dispatchType": "task", "task": {"workerType": "nope"}}
    )
    problem = missing_references(task, [_entry("known")], [])
    assert problem is not None and problem.reason == "UnknownWorkerType" and "'nope'" in problem.message


# ------------------------------------------------------------------ names


def _name_rules(kind: str) -> list[dict[str, str]]:
    info = next(i for i in crdgen.KINDS if i.kind == kind)
    rules: list[dict[str, str]] = crdgen.crd(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "x-kubernetes-validations"
    ]
    assert all(r["message"].startswith("metadata.name must") for r in rules)
    return rules


@pytest.mark.parametrize("kind", ["Worker", "Pipeline", "RouterPolicy", "Schedule"])
def test_name_rules_keep_every_derived_name_valid(kind: str) -> None:
    first = _name_rules(kind)[0]["rule"]
    limit = int(re.search(r"size\(self\.metadata\.name\) <= (\d+)", first).group(1))  # type: ignore[union-attr]
    pattern = json.loads(re.search(r'matches\(("(?:[^"\\]|\\.)*")\)', first).group(1))  # type: ignore[union-attr]
    longest = "a" * limit
    assert re.fullmatch(pattern, longest) and not re.fullmatch(pattern, "doc.classifier")
    assert not re.fullmatch(pattern, "9lives")  # a Worker's Service <name>-metrics must start with a letter
    suffixes = {"Worker": "-" + "t" * crdgen._max_length(TierName), "Pipeline": "-pipeline"}
    suffixes |= {"RouterPolicy": "-router", "Schedule": "-scheduler"}
    assert len(longest + suffixes[kind]) <= 63  # the longest child name is still a label value


def test_names_that_default_the_worker_type_or_pipeline_name_have_their_rules() -> None:
    (_, worker_type) = _name_rules("Worker")
    assert worker_type["rule"] == "has(self.spec.name) || size(self.metadata.name) <= 40"
    (_, reserved) = _name_rules("Pipeline")
    assert "'incoming'" in reserved["message"] and '["incoming"]' in reserved["rule"]


def test_a_name_defaulted_from_metadata_is_reported_as_metadata_name() -> None:
    body = {
        "apiVersion": "loom.dev/v1alpha1",
        "kind": "Worker",
        "metadata": {"name": "doc.classifier", "namespace": "ns"},
        "spec": {"systemPrompt": "x"},
    }
    with pytest.raises(Stalled) as info:
        parse_body(body)
    assert info.value.message.startswith("metadata.name:") and "spec.name" not in info.value.message


# ------------------------------------------------------------------ bounds


def test_prompt_bound_is_one_rule_for_pydantic_and_cel() -> None:
    _worker("w", systemPrompt="x" * PROMPT_MAX_CHARS)
    with pytest.raises(ValidationError) as info:
        _worker("w", systemPrompt="x" * (PROMPT_MAX_CHARS + 1))
    message = info.value.errors()[0]["msg"]
    prop = crdgen.crd(crdgen.KINDS[0])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
        "spec"
    ]["properties"]["systemPrompt"]
    (rule,) = prop["x-kubernetes-validations"]
    assert rule["rule"] == f"size(self) <= {PROMPT_MAX_CHARS}" and rule["message"] in message
    assert "knowledgeSources" in rule["message"]


def test_kubectl_explain_descriptions_carry_defaults_and_bounds() -> None:
    spec = crdgen.crd(crdgen.KINDS[0])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
        "spec"
    ]
    max_replicas = spec["properties"]["autoscaling"]["properties"]["maxReplicas"]["description"]
    assert "Default: 5." in max_replicas and "<= 1000" in max_replicas
    status = crdgen.crd(crdgen.KINDS[0])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
        "status"
    ]
    assert "Default" not in json.dumps(status)


def test_schedule_next_column_is_a_string() -> None:
    info = next(i for i in crdgen.KINDS if i.kind == "Schedule")
    columns = {c["name"]: c for c in info.columns}
    assert columns["Next"]["type"] == "string" and columns["Last"]["type"] == "date"


# ------------------------------------------------------------------ diffbase


def _body(spec: dict[str, Any], status: dict[str, Any] | None = None) -> kopf.Body:
    raw = {"apiVersion": "loom.dev/v1alpha1", "kind": "Worker", "metadata": {"name": "w"}, "spec": spec}
    if status is not None:
        raw["status"] = status
    return kopf.Body(raw)


def test_digest_diffbase_tells_new_unchanged_and_changed_apart() -> None:
    store = DigestDiffBaseStorage()
    spec = {"systemPrompt": "p" * 10_000, "tiers": ["local"]}
    assert store.fetch(body=_body(spec)) is None  # never handled: a create
    patch = kopf.Patch()
    store.store(body=_body(spec), patch=patch, essence=store.build(body=_body(spec)))
    status = dict(patch["status"])
    assert "p" * 100 not in json.dumps(status) and set(status["kopf"]) == {"lastHandledDigest"}
    same = _body(dict(reversed(list(spec.items()))), status)
    assert store.fetch(body=same) == store.build(body=same)  # unchanged: no diff
    changed = _body({**spec, "tiers": ["frontier"]}, status)
    assert store.fetch(body=changed) != store.build(body=changed)  # an update


def test_digest_diffbase_reads_and_drops_the_legacy_full_copy() -> None:
    store = DigestDiffBaseStorage()
    spec = {"systemPrompt": "p"}
    legacy = {"kopf": {"lastHandledConfiguration": json.dumps({"spec": spec})}}
    assert store.fetch(body=_body(spec, legacy)) == {"spec": spec}
    patch = kopf.Patch()
    store.store(body=_body(spec, legacy), patch=patch, essence=store.build(body=_body(spec, legacy)))
    assert patch["status"]["kopf"]["lastHandledConfiguration"] is None


def test_render_reports_a_reference_outside_the_manifests_given(tmp_path: Path) -> None:
    from loom_operator.cli.render_cmd import render_resources

    pipe = tmp_path / "pipeline.yaml"
    pipe.write_text(
        "apiVersion: loom.dev/v1alpha1\nkind: Pipeline\nmetadata: {name: docs}\n"
        "spec: {pipelineStages: [{name: a, workerType: elsewhere}]}\n"
    )
    with pytest.raises(ValueError, match=r"workerType 'elsewhere'.*rendered together"):
        render_resources(load_paths([pipe]), SETTINGS, keda=False, namespace="ns")
