"""Loading plain YAML and CR manifests; every problem in every file, named by file, resource and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from loom.api.loader import LoadError, infer_kind, load_one, load_paths, load_text, resolve_schema_refs

MANIFESTS = """
apiVersion: loom.dev/v1alpha1
kind: Worker
metadata: {name: summarizer, namespace: team-a}
spec:
  systemPrompt: Summarise.
  defaultModelTier: local
---
apiVersion: loom.dev/v1alpha1
kind: RouterPolicy
metadata: {name: default}
spec:
  tierOverrides: {summarizer: local}
---
apiVersion: loom.dev/v1alpha1
kind: Pipeline
metadata: {name: report}
spec:
  pipelineStages:
    - {name: sum, workerType: summarizer, inputMapping: {text: goal.context.text}}
---
apiVersion: loom.dev/v1alpha1
kind: Schedule
metadata: {name: nightly}
spec:
  cron: "0 2 * * *"
  goal: {pipeline: report}
"""


def test_manifests_of_every_kind_with_names_from_metadata() -> None:
    rs = load_text(MANIFESTS, "all.yaml")
    assert [(r.kind, r.name) for r in rs] == [
        ("Worker", "summarizer"),
        ("RouterPolicy", "default"),
        ("Pipeline", "report"),
        ("Schedule", "nightly"),
    ]
    assert rs[0].spec.name == "summarizer" and rs[0].namespace == "team-a" and rs[0].is_manifest
    assert rs[0].manifest()["spec"]["systemPrompt"] == "Summarise."


def test_plain_files_infer_their_kind() -> None:
    assert infer_kind({"pipeline_stages": []}) == "Pipeline"
    assert infer_kind({"tier_overrides": {}}) == "RouterPolicy"
    assert infer_kind({"cron": "x"}) == "Schedule"
    assert infer_kind({"name": "w", "system_prompt": "p", "tiers": ["local"]}) == "Worker"
    rs = load_text(
        "schedules:\n  - {name: a, interval_seconds: 60, goal: {pipeline: p}}\n"
        "  - {name: b, cron: '@hourly', dispatch_type: task, task: {worker_type: w}}\n"
    )
    assert [r.name for r in rs] == ["a", "b"]


def test_every_problem_in_every_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "apiVersion: loom.dev/v1alpha1\nkind: Worker\nmetadata: {name: w1}\n"
        "spec: {systemPrompt: p, timeoutSeconds: -1, maxInFlight: 0}\n"
        "---\napiVersion: loom.dev/v1\nkind: Gadget\nmetadata: {}\nspec: []\n"
    )
    (tmp_path / "b.yaml").write_text("name: w2\nworker_kind: processor\nprocessing_backend: not-a-path\n")
    (tmp_path / "d.yaml").write_text("name: W3\nreset_after_task: false\n")
    (tmp_path / "c.yaml").write_text("key: [unclosed\n")
    with pytest.raises(LoadError) as err:
        load_paths([tmp_path])
    problems = err.value.problems
    a, b, c = (str(tmp_path / f) for f in ("a.yaml", "b.yaml", "c.yaml"))
    assert f"{a}: Worker/w1: spec.timeoutSeconds: Input should be greater than 0" in problems
    assert f"{a}: Worker/w1: spec.maxInFlight: Input should be greater than or equal to 1" in problems
    assert f"{a}[1]: apiVersion must be loom.dev/v1alpha1, got 'loom.dev/v1'" in problems
    assert any(p.startswith(f"{a}[1]: kind must be one of") for p in problems)
    assert f"{a}[1]: metadata.name is required" in problems and f"{a}[1]: spec must be a mapping" in problems
    assert any(p.startswith(f"{b}: Worker.processing_backend: String should match pattern") for p in problems)
    # a rule about the failing field itself is not reported as a second, false problem
    assert not any("need processingBackend" in p for p in problems)
    assert any(p.startswith(f"{c}: invalid YAML") for p in problems)
    # cross-field rules are reported although a field failed (pydantic alone would hide them)
    d = str(tmp_path / "d.yaml")
    assert any(p.startswith(f"{d}: Worker.name: String should match pattern") for p in problems)
    assert (
        f"{d}: Worker: LLM workers need systemPrompt; resetAfterTask must be true: workers are stateless"
        in problems
    )


def test_load_one_and_schema_refs(tmp_path: Path) -> None:
    f = tmp_path / "w.yaml"
    f.write_text("name: w\nsystem_prompt: p\ninput_schema_ref: loom.messages.TokenUsage\n")
    spec = resolve_schema_refs(load_one(f, "Worker").spec)
    assert (
        spec.input_schema_ref is None
        and spec.input_schema["properties"]["prompt_tokens"]["type"] == "integer"
    )
    with pytest.raises(LoadError, match="expected exactly one Pipeline, found 0"):
        load_one(f, "Pipeline")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: w\nsystem_prompt: p\noutput_schema_ref: loom.messages.utcnow\n")
    with pytest.raises(TypeError, match="is not a pydantic model"):
        resolve_schema_refs(load_one(bad, "Worker").spec)
