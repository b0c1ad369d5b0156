"""``loom validate``, ``loom worker`` start-up and ``loom render`` on the files a user of the original writes.

Every check runs the real ``loom`` command in a subprocess; none needs NATS (validate is offline, and
a worker with a bad config must stop before it connects).
"""

from __future__ import annotations

from pathlib import Path

import yaml
from tests.support.processes import run_cli, write_yaml

ENTITY_EXTRACTOR = {
    "name": "entity_extractor",
    "description": "Extracts named entities (people, places, orgs) from text.",
    "system_prompt": "You are an entity extraction agent.",
    "input_schema": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
    "default_model_tier": "local",
}


def test_an_empty_file_fails_validate_and_worker_alike(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    out = run_cli("validate", str(empty))
    assert out.returncode == 1
    assert f"{empty}: empty: no YAML document to read" in out.stderr and "OK" not in out.stdout
    worker = run_cli("worker", "--config", str(empty), "--metrics-port", "-1", timeout=30)
    assert worker.returncode == 2
    assert f"{empty}: empty: no YAML document to read" in worker.stderr


def test_cron_and_misspelt_keys_are_named_as_such(tmp_path: Path) -> None:
    cron = write_yaml(tmp_path, "nightly", {"name": "nightly", "cron": "0 2 * *", "goal": {"pipeline": "p"}})
    specc = write_yaml(
        tmp_path,
        "specc",
        {"apiVersion": "loom.dev/v1alpha1", "kind": "Worker", "metadata": {"name": "w"}, "specc": {}},
    )
    out = run_cli("validate", str(cron), str(specc))
    assert out.returncode == 1
    assert f"{cron}: Schedule.cron: cron needs 5 fields" in out.stderr and "got 4" in out.stderr
    assert "should match pattern" not in out.stderr
    assert f"{specc}: unknown key 'specc' (did you mean 'spec'?)" in out.stderr
    assert "spec must be a mapping" not in out.stderr


def test_a_missing_knowledge_file_fails_validate_and_stops_the_worker_in_one_line(tmp_path: Path) -> None:
    workers = tmp_path / "configs" / "workers"
    workers.mkdir(parents=True)
    cfg = write_yaml(
        workers,
        "legal_summarizer",
        {**ENTITY_EXTRACTOR, "name": "legal_summarizer", "knowledge_sources": [{"path": "legal_terms.md"}]},
    )
    out = run_cli("validate", str(cfg))
    assert out.returncode == 1
    assert f"no such file: {workers / 'legal_terms.md'}" in out.stderr
    assert f"relative knowledge paths are read from {workers}" in out.stderr

    worker = run_cli("worker", "--config", str(cfg), "--metrics-port", "-1", timeout=30)
    assert worker.returncode == 2
    lines = worker.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in worker.stderr
    assert "legal_terms.md" in lines[0] and f"relative paths are read from {workers}" in lines[0]

    (workers / "legal_terms.md").write_text("- **Habeas corpus**: ...\n")
    ok = run_cli("validate", str(cfg))
    assert ok.returncode == 0, ok.stderr
    assert f"relative knowledge paths are read from {workers} (the config file's folder)" in ok.stdout

    # a folder walk meets the workers' few-shot files: knowledge, not broken configs
    (workers / "examples.yaml").write_text("- {input: a, output: b}\n")
    write_yaml(
        workers,
        "classifier",
        {
            **ENTITY_EXTRACTOR,
            "name": "classifier",
            "knowledge_sources": [{"path": "examples.yaml", "inject_as": "few_shot"}],
        },
    )
    ok = run_cli("validate", str(tmp_path / "configs"))
    assert ok.returncode == 0, ok.stderr
    assert f"{workers / 'examples.yaml'}: OK (knowledge of Worker/classifier, not a config)" in ok.stdout


def test_tier_names_are_checked_against_the_policy_in_effect(tmp_path: Path) -> None:
    premium = write_yaml(tmp_path, "premium", {**ENTITY_EXTRACTOR, "default_model_tier": "premium"})
    out = run_cli("validate", str(premium))
    assert out.returncode == 1
    assert (
        f"{premium}: Worker/entity_extractor: defaultModelTier: unknown tier 'premium' "
        "(known tiers: local, standard, frontier; the default tiers" in out.stderr
    )

    policies = tmp_path / "policies"
    policies.mkdir()
    gold = write_yaml(policies, "gold", {"tiers": [{"name": "local"}, {"name": "gold"}]})
    out = run_cli("validate", str(premium), str(gold))
    assert out.returncode == 1 and "(known tiers: local, gold; from RouterPolicy/gold" in out.stderr
    out = run_cli("validate", str(premium), "--policy", str(gold))
    assert out.returncode == 1 and f"(known tiers: local, gold; from {gold})" in out.stderr

    with_premium = write_yaml(policies, "premium", {"tiers": [{"name": "local"}, {"name": "premium"}]})
    out = run_cli("validate", str(premium), str(with_premium))
    assert out.returncode == 0, out.stderr

    pipeline = write_yaml(
        tmp_path,
        "analysis",
        {
            "name": "analysis_pipeline",
            "pipeline_stages": [
                {
                    "name": "x",
                    "worker_type": "entity_extractor",
                    "tier": "gold",
                    "input_mapping": {"text": "goal.context.t"},
                }
            ],
        },
    )
    rules = write_yaml(tmp_path, "router_rules", {"tier_overrides": {"entity_extractor": "platinum"}})
    out = run_cli("validate", str(pipeline), str(rules))
    assert out.returncode == 1
    assert "pipelineStages[0] (x).tier: unknown tier 'gold'" in out.stderr
    assert "tierOverrides.entity_extractor: unknown tier 'platinum'" in out.stderr

    local_only = write_yaml(tmp_path, "entity_extractor", ENTITY_EXTRACTOR)  # serves tier local
    out = run_cli("validate", str(pipeline), str(local_only), str(gold))
    assert out.returncode == 1
    assert (
        "pipelineStages[0] (x).tier: worker 'entity_extractor' does not serve tier 'gold' (serves local)"
        in out.stderr
    )


def test_one_mistake_is_printed_once(tmp_path: Path) -> None:
    cfg = write_yaml(
        tmp_path, "w", {**ENTITY_EXTRACTOR, "output_schema": {"type": "object", "properties": {"a": 3}}}
    )
    out = run_cli("validate", str(cfg))
    assert out.returncode == 1
    assert out.stderr.count("properties/a: 3 is not of type") == 1
    assert "1 problem found" in out.stderr


def test_gateway_and_orchestrator_configs_are_validated_as_what_they_are(tmp_path: Path) -> None:
    worker = write_yaml(tmp_path, "entity_extractor", ENTITY_EXTRACTOR)
    gateway = write_yaml(
        tmp_path,
        "mcp",
        {
            "name": "my_server",
            "nats_url": "nats://localhost:4222",
            "tools": {"workers": [{"config": worker.name}]},
        },
    )
    orchestrator = write_yaml(
        tmp_path,
        "orchestrator",
        {"name": "research", "workers": [worker.name], "decomposer": {"tier": {"name": "planner"}}},
    )
    out = run_cli("validate", str(worker), str(gateway), str(orchestrator))
    assert out.returncode == 0, out.stderr
    assert f"{gateway}: OK (MCPGateway/my_server (tools: entity_extractor)" in out.stdout
    assert f"{orchestrator}: OK (Orchestrator/research (workers: entity_extractor)" in out.stdout

    broken_gateway = write_yaml(
        tmp_path, "mcp-broken", {"name": "s", "tools": {"workers": [{"config": "nowhere.yaml"}]}}
    )
    broken_orchestrator = write_yaml(tmp_path, "orch-broken", {"name": "o", "workers": [worker.name]})
    out = run_cli("validate", str(broken_gateway), str(broken_orchestrator))
    assert out.returncode == 1
    assert f"{broken_gateway}: tools.workers[0]:" in out.stderr and "nowhere.yaml" in out.stderr
    assert f"{broken_orchestrator}: orchestrator.decomposer: Field required" in out.stderr
    assert "Worker" not in out.stderr  # neither is read as a Worker


def test_original_names_render_to_objects_the_api_server_accepts(tmp_path: Path) -> None:
    worker = write_yaml(tmp_path, "entity_extractor", ENTITY_EXTRACTOR)
    out = run_cli("validate", str(worker))
    assert out.returncode == 0 and "Worker/entity_extractor, object name entity-extractor" in out.stdout
    rendered = run_cli("render", str(worker))
    assert rendered.returncode == 0, rendered.stderr
    objects = list(yaml.safe_load_all(rendered.stdout))
    names = {o["kind"]: o["metadata"]["name"] for o in objects}
    assert names == {
        "ConfigMap": "entity-extractor-config",
        "Deployment": "entity-extractor-local",
        "Service": "entity-extractor-metrics",
    }
    config = yaml.safe_load(objects[0]["data"]["worker.yaml"])
    assert config["spec"]["name"] == "entity_extractor"  # still the worker type of tasks and subjects

    manifest = write_yaml(
        tmp_path,
        "manifest",
        {
            "apiVersion": "loom.dev/v1alpha1",
            "kind": "Worker",
            "metadata": {"name": "entity_extractor"},
            "spec": {"systemPrompt": "p", "defaultModelTier": "local"},
        },
    )
    message = (
        "Worker/entity_extractor: metadata.name 'entity_extractor' cannot become Kubernetes object names "
        "(use lower-case letters, digits and '-', starting with a letter); use 'entity-extractor'"
    )
    out = run_cli("validate", str(manifest))
    assert out.returncode == 1 and f"{manifest}: {message}" in out.stderr
    rendered = run_cli("render", str(manifest))
    assert rendered.returncode == 1 and f"{manifest}: {message}" in rendered.stderr
    assert rendered.stdout == ""


def test_two_names_that_become_one_object_name_are_reported(tmp_path: Path) -> None:
    a = write_yaml(tmp_path, "a", {**ENTITY_EXTRACTOR, "name": "doc_reader"})
    b = write_yaml(tmp_path, "b", {**ENTITY_EXTRACTOR, "name": "doc-reader"})
    out = run_cli("validate", str(a), str(b))
    assert out.returncode == 1
    assert (
        f"{b}: Worker/doc-reader: its objects would be named 'doc-reader' like those of Worker/doc_reader"
        in out.stderr
    )


def test_eval_suites_are_validated_with_their_worker_and_tiers(tmp_path: Path) -> None:
    worker = write_yaml(tmp_path, "extractor", {**ENTITY_EXTRACTOR, "name": "extractor", "tiers": ["local"]})

    def suite(name: str, **extra: object) -> Path:
        spec = {"worker": "extractor", "scorers": [{"type": "schema"}], "cases": [{"id": "a", "input": {}}]}
        body = {"apiVersion": "loom.dev/v1alpha1", "kind": "EvalSuite", "metadata": {"name": name}}
        return write_yaml(tmp_path, name, {**body, "spec": {**spec, **extra}})

    good = suite("good")
    out = run_cli("validate", str(worker), str(good))
    assert out.returncode == 0, out.stderr
    assert f"{good}: OK (EvalSuite/good)" in out.stdout
    unserved = suite("unserved", tier="standard")
    unknown = suite("unknown", tier="premium")
    no_expected = suite("no-expected", scorers=[{"type": "exact"}])
    out = run_cli("validate", str(worker), str(unserved), str(unknown), str(no_expected))
    assert out.returncode == 1
    assert "EvalSuite/unserved: tier: worker 'extractor' does not serve tier 'standard'" in out.stderr
    assert "EvalSuite/unknown: tier: unknown tier 'premium'" in out.stderr
    assert "scorer 'exact' compares with the expected output, but the case has no expected" in out.stderr
