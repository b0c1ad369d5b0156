"""The local-mode process plan: what `loom up` runs for a set of manifests."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import yaml

from loom.api import RouterConfig, load_one, load_paths, load_text
from loom.local.manifests import PHASES, PlanError, build_plan, local_llm_tiers

ROOT = Path(__file__).resolve().parents[3]
SAMPLES = ROOT / "config" / "samples"
LLM_URL = "http://127.0.0.1:18080/v1"


def plan_for(resources, tmp_path: Path, **kw):  # type: ignore[no-untyped-def]
    kw.setdefault("local_llm_url", LLM_URL)
    return build_plan(resources, run_dir=tmp_path, ports=itertools.count(20000), **kw)


def test_samples_plan_one_router_a_worker_per_tier_the_pipeline_and_the_schedule(tmp_path: Path) -> None:
    plan = plan_for(load_paths([SAMPLES]), tmp_path)
    names = [p.name for p in plan.processes]
    assert names[0] == "router"
    assert sorted(names) == sorted(
        [
            "router",
            "worker-doc-extractor-local",
            "worker-doc-classifier-local",
            "worker-doc-summarizer-local",
            "worker-report-assembler-local",
            "pipeline-doc-analysis",
            "scheduler-hourly-status",
        ]
    )
    ports = [p.metrics_port for p in plan.processes]
    assert len(set(ports)) == len(ports)
    assert plan.local_llm_tiers == ("local",)
    assert plan.warnings == ()
    # Start order: router before workers before pipelines before schedulers.
    phases = {p.name: p.phase for p in plan.processes}
    assert phases["router"] < phases["worker-doc-classifier-local"] < phases["pipeline-doc-analysis"]
    assert phases["pipeline-doc-analysis"] < phases["scheduler-hourly-status"]


def test_router_config_is_the_policy_plus_the_worker_catalog(tmp_path: Path) -> None:
    plan = plan_for(load_paths([SAMPLES]), tmp_path)
    router = plan.process("router")
    assert router.args == ("router", "--config", str(tmp_path / "router.yaml"))
    assert router.config is not None
    config = RouterConfig.model_validate(router.config)
    assert [t.name for t in config.policy.tiers] == ["local", "standard"]
    assert config.policy.rate_limits["local"].max_concurrent == 8
    assert config.workers is not None
    assert set(config.workers) == {"doc-extractor", "doc-classifier", "doc-summarizer", "report-assembler"}
    assert config.workers["doc-classifier"].tiers == ["local"]


def test_worker_gets_its_manifest_and_the_tier_with_the_local_model_url(tmp_path: Path) -> None:
    plan = plan_for(load_paths([SAMPLES]), tmp_path)
    proc = plan.process("worker-doc-summarizer-local")
    cfg = tmp_path / "worker-doc-summarizer.yaml"
    assert proc.args == (
        "worker", "--config", str(cfg), "--tier", "local", "--base-dir", str(SAMPLES.resolve())
    )
    tier = json.loads(proc.env["LOOM_TIER_CONFIG"])
    assert tier["name"] == "local" and tier["backend"] == "local"
    assert tier["baseUrl"] == LLM_URL
    assert tier["model"] == "smollm2-135m-instruct"
    assert proc.env["LOOM_LOCAL_LLM_URL"] == LLM_URL
    # loom up's own model server on loopback is the one endpoint local mode adds to the allow-list
    assert proc.env["LOOM_LOCAL_MODE"] == "1"
    origin = LLM_URL.rsplit("/", 1)[0]
    assert json.loads(proc.env["LOOM_MODEL_ENDPOINTS"])["allowedUrls"] == [origin]
    # The written config is the Worker manifest itself and loads back into the same spec.
    assert proc.config is not None
    cfg.write_text(yaml.safe_dump(proc.config), encoding="utf-8")
    original = next(r for r in load_paths([SAMPLES]) if r.name == "doc-summarizer")
    assert load_one(cfg, "Worker").spec == original.spec


def test_without_a_router_policy_every_tier_is_a_local_default(tmp_path: Path) -> None:
    resources = load_text(
        """
apiVersion: loom.dev/v1alpha1
kind: Worker
metadata: {name: tagger}
spec:
  systemPrompt: Tag things.
  defaultModelTier: fast
  tiers: [fast, local]
"""
    )
    plan = plan_for(resources, tmp_path)
    config = RouterConfig.model_validate(plan.process("router").config)
    assert config.policy.tiers == []
    tier = json.loads(plan.process("worker-tagger-fast").env["LOOM_TIER_CONFIG"])
    assert tier == {
        "name": "fast",
        "backend": "local",
        "baseUrl": LLM_URL,
        "maxRetries": 3,
        "promptCaching": True,
        "timeoutSeconds": 60.0,
    }
    assert local_llm_tiers(resources) == ["fast", "local"]


def test_processor_workers_and_tiers_with_a_base_url_need_no_local_model(tmp_path: Path) -> None:
    resources = load_text(
        """
apiVersion: loom.dev/v1alpha1
kind: RouterPolicy
metadata: {name: p}
spec:
  tiers:
    - {name: local, backend: local, baseUrl: "http://gpu-box:8080/v1"}
    - {name: edge, backend: local}
  modelEndpoints: {allowedUrls: ["http://gpu-box:8080"], allowedNetworks: ["192.168.0.0/16"]}
---
apiVersion: loom.dev/v1alpha1
kind: Worker
metadata: {name: llm-one}
spec: {systemPrompt: x, defaultModelTier: local}
---
apiVersion: loom.dev/v1alpha1
kind: Worker
metadata: {name: proc-one}
spec: {workerKind: processor, processingBackend: loom.contrib.docs.DocumentFacts, defaultModelTier: edge}
"""
    )
    assert local_llm_tiers(resources) == []
    plan = build_plan(resources, run_dir=tmp_path, ports=itertools.count(1))
    proc = plan.process("worker-llm-one-local")
    tier = json.loads(proc.env["LOOM_TIER_CONFIG"])
    assert tier["baseUrl"] == "http://gpu-box:8080/v1"
    assert proc.env["LOOM_LOCAL_MODE"] == "1"
    allowed = json.loads(proc.env["LOOM_MODEL_ENDPOINTS"])
    assert allowed == {"allowedUrls": ["http://gpu-box:8080"], "allowedNetworks": ["192.168.0.0/16"]}


def test_a_fallback_tier_on_the_local_model_gets_the_embedded_server(tmp_path: Path) -> None:
    """A cloud tier falling back to the local model: loom up starts the model, and the worker's
    fallback definition points at it (as a local tier's does)."""
    resources = load_text(
        """
apiVersion: loom.dev/v1alpha1
kind: RouterPolicy
metadata: {name: p}
spec:
  tiers:
    - {name: cloud, backend: openai, model: gpt-x, fallback: [spare]}
    - {name: spare, backend: local}
---
apiVersion: loom.dev/v1alpha1
kind: Worker
metadata: {name: llm-one}
spec: {systemPrompt: x, defaultModelTier: cloud}
"""
    )
    assert local_llm_tiers(resources) == ["spare"]
    url = "http://127.0.0.1:8123/v1"
    plan = build_plan(resources, run_dir=tmp_path, ports=itertools.count(1), local_llm_url=url)
    env = plan.process("worker-llm-one-cloud").env
    (spare,) = json.loads(env["LOOM_FALLBACK_TIERS"])
    assert (spare["name"], spare["baseUrl"]) == ("spare", url)
    assert env["LOOM_LOCAL_LLM_URL"] == url
    assert "http://127.0.0.1:8123" in json.loads(env["LOOM_MODEL_ENDPOINTS"])["allowedUrls"]


def test_an_llm_tier_on_the_local_model_without_a_server_url_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="runs on the local model"):
        build_plan(load_paths([SAMPLES]), run_dir=tmp_path, ports=itertools.count(1))


def test_undefined_tier_two_policies_and_duplicates_are_reported_together(tmp_path: Path) -> None:
    text = """
apiVersion: loom.dev/v1alpha1
kind: RouterPolicy
metadata: {name: a}
spec: {tiers: [{name: local}]}
---
apiVersion: loom.dev/v1alpha1
kind: Worker
metadata: {name: w}
spec: {systemPrompt: x, defaultModelTier: gold}
---
apiVersion: loom.dev/v1alpha1
kind: Worker
metadata: {name: w}
spec: {systemPrompt: y, defaultModelTier: local}
"""
    with pytest.raises(PlanError) as err:
        plan_for(load_text(text), tmp_path)
    joined = "\n".join(err.value.problems)
    assert "Worker 'w' is defined twice" in joined
    assert "serves tier 'gold', which RouterPolicy 'a' does not define (defined: local)" in joined

    policy = text.split("---")[0]
    two = load_text(policy + "---" + policy.replace("name: a", "name: b"))
    with pytest.raises(PlanError, match="one router, but found 2 RouterPolicies"):
        plan_for(two, tmp_path)


def test_warnings_name_missing_workers_orchestrator_and_api_keys(tmp_path: Path) -> None:
    resources = load_text(
        """
apiVersion: loom.dev/v1alpha1
kind: RouterPolicy
metadata: {name: p}
spec:
  tiers:
    - name: standard
      backend: anthropic
      apiKeySecretRef: {name: anthropic, key: api-key}
---
apiVersion: loom.dev/v1alpha1
kind: Worker
metadata: {name: writer}
spec: {systemPrompt: x, defaultModelTier: standard}
---
apiVersion: loom.dev/v1alpha1
kind: Pipeline
metadata: {name: flow}
spec:
  pipelineStages:
    - {name: a, workerType: writer, tier: frontier}
    - {name: b, workerType: ghost, inputMapping: {x: a.output.y}}
---
apiVersion: loom.dev/v1alpha1
kind: Schedule
metadata: {name: nightly}
spec: {cron: "0 3 * * *", goal: {instruction: plan the day}}
"""
    )
    plan = plan_for(resources, tmp_path, env={})
    warnings = "\n".join(plan.warnings)
    assert "needs the API key in $ANTHROPIC_API_KEY" in warnings
    assert "asks for tier 'frontier', which Worker 'writer' does not serve" in warnings
    assert "needs worker type 'ghost', which no Worker in these manifests serves" in warnings
    assert "submits goals to the orchestrator, which is not configured" in warnings
    tier = json.loads(plan.process("worker-writer-standard").env["LOOM_TIER_CONFIG"])
    assert tier["apiKeyEnv"] == "ANTHROPIC_API_KEY"
    assert "LOOM_LOCAL_LLM_URL" not in plan.process("worker-writer-standard").env

    with_key = plan_for(resources, tmp_path, env={"ANTHROPIC_API_KEY": "k"}, orchestrator_config="orch.yaml")
    assert not any("API key" in w or "orchestrator" in w for w in with_key.warnings)
    orch = with_key.process("orchestrator")
    assert orch.args == ("orchestrator", "--config", str(Path("orch.yaml").resolve()))
    assert orch.phase == PHASES["orchestrator"]


def test_relative_knowledge_paths_are_made_absolute_against_the_source_file(tmp_path: Path) -> None:
    src = tmp_path / "manifests"
    src.mkdir()
    (src / "w.yaml").write_text(
        """
apiVersion: loom.dev/v1alpha1
kind: Worker
metadata: {name: legal}
spec:
  systemPrompt: x
  defaultModelTier: local
  knowledgeSources: [{path: knowledge/terms.md}]
  knowledgeSilos: [{name: notes, type: folder, path: ./notes}]
  workspaceDir: /srv/ws
""",
        encoding="utf-8",
    )
    plan = plan_for(load_paths([src]), tmp_path / "run")
    config = plan.process("worker-legal-local").config
    assert config is not None
    spec = config["spec"]
    assert spec["knowledgeSources"][0]["path"] == str(src / "knowledge" / "terms.md")
    assert spec["knowledgeSilos"][0]["path"] == str(src / "notes")
    assert spec["workspaceDir"] == "/srv/ws"


def test_nothing_to_run_is_an_error(tmp_path: Path) -> None:
    policy_only = load_text(
        "apiVersion: loom.dev/v1alpha1\nkind: RouterPolicy\nmetadata: {name: p}\nspec: {}\n"
    )
    with pytest.raises(PlanError, match="nothing to run"):
        plan_for(policy_only, tmp_path)
