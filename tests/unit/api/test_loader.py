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
    # Any field only a RouterPolicy has marks one, in either spelling.
    policy_only = ("tenant_limits", "tenantLimits", "on_limit", "modelEndpoints", "max_payload_bytes")
    for key in policy_only:
        assert infer_kind({key: {}}) == "RouterPolicy", key
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


def test_hidden_folders_inside_a_named_directory_are_not_manifests(tmp_path: Path) -> None:
    (tmp_path / "w.yaml").write_text("name: w\nsystem_prompt: p\n")
    kept = tmp_path / ".loom" / "workshop" / "versions"
    kept.mkdir(parents=True)
    (kept / "w.yaml").write_text("name: w\nsystem_prompt: older\n")
    (tmp_path / ".github").mkdir()
    (tmp_path / ".github" / "ci.yaml").write_text("on: push\njobs: {}\n")
    (tmp_path / ".hidden.yaml").write_text("name: h\nsystem_prompt: p\n")
    resources = load_paths([tmp_path])
    assert [(r.kind, r.name, r.spec.system_prompt) for r in resources] == [("Worker", "w", "p")]
    # A hidden file named directly is still read: the user asked for it.
    assert [r.name for r in load_paths([tmp_path / ".hidden.yaml"])] == ["h"]


def test_an_empty_file_is_an_error_everywhere(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing but a comment\n")
    with pytest.raises(LoadError, match="empty: no YAML document"):
        load_text("", "empty.yaml")
    with pytest.raises(LoadError, match="empty: no YAML document"):
        load_one(empty, "Worker")


def test_a_misspelt_manifest_key_is_named_with_a_suggestion() -> None:
    with pytest.raises(LoadError) as err:
        load_text("apiVersion: loom.dev/v1alpha1\nkind: Worker\nmetadata: {name: w}\nspecc: {x: 1}\n", "w")
    assert "w: unknown key 'specc' (did you mean 'spec'?)" in err.value.problems
    assert not any("must be a mapping" in p for p in err.value.problems)


def test_unknown_keys_anywhere_get_the_nearest_known_one() -> None:
    with pytest.raises(LoadError) as err:
        load_text("name: w\nsystem_prompt: p\nmax_ouput_tokens: 5\nautoscaling: {maxReplica: 3}\n", "w")
    assert sorted(err.value.problems) == [
        "w: Worker.autoscaling: unknown key 'maxReplica' (did you mean 'maxReplicas'?)",
        "w: Worker: unknown key 'max_ouput_tokens' (did you mean 'max_output_tokens'?)",
    ]


def test_a_cron_with_four_fields_says_it_needs_five() -> None:
    with pytest.raises(LoadError) as err:
        load_text("name: nightly\ncron: '0 2 * *'\ngoal: {pipeline: p}\n", "s")
    (problem,) = err.value.problems
    assert problem.startswith("s: Schedule.cron: cron needs 5 fields") and "got 4" in problem
    assert "pattern" not in problem


def test_the_same_schema_mistake_is_reported_once() -> None:
    with pytest.raises(LoadError) as err:
        load_text("name: w\nsystem_prompt: p\noutput_schema: {type: object, properties: {a: 3}}\n", "w")
    (problem,) = err.value.problems
    assert problem.count("properties/a: 3 is not of type") == 1


def test_plain_names_keep_their_role_and_get_valid_object_names() -> None:
    (res,) = load_text("name: entity_extractor\nsystem_prompt: p\n", "w.yaml")
    assert res.spec.worker_type == "entity_extractor"  # subjects and tasks keep the original's name
    assert res.name == "entity-extractor"
    manifest = res.manifest()
    assert manifest["metadata"]["name"] == "entity-extractor"
    assert manifest["spec"]["name"] == "entity_extractor"
    (pipe,) = load_text(
        "name: analysis_pipeline\n"
        "pipeline_stages: [{name: a, worker_type: x, input_mapping: {t: goal.context.t}}]\n"
    )
    assert pipe.name == "analysis-pipeline" and pipe.spec.pipeline_name == "analysis_pipeline"


@pytest.mark.parametrize(
    ("doc", "kind", "command"),
    [
        ("name: s\ntools: {workers: [{config: w.yaml}]}\n", "MCPGateway", "loom mcp --config FILE"),
        ("name: o\nworkers: [w.yaml]\ndecomposer: {tier: {name: p}}\n", "Orchestrator", "loom orchestrator"),
        ("policy: {}\nworkers: {}\n", "RouterConfig", "loom router --config FILE"),
    ],
)
def test_other_config_kinds_are_recognised_not_read_as_workers(doc: str, kind: str, command: str) -> None:
    import yaml

    assert infer_kind(yaml.safe_load(doc)) == kind
    with pytest.raises(LoadError) as err:
        load_text(doc, "c.yaml")
    (problem,) = err.value.problems
    assert command in problem and "Worker." not in problem
