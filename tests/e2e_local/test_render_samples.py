"""`loom render` on the samples equals what the operator's own render functions make of them,
and local mode runs the router and workers from the same configuration the operator renders."""

from __future__ import annotations

import itertools
import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from loom.api import load_paths
from loom.api.router_policy import TIER_CONFIG_ENV
from loom.llm.endpoints import ENDPOINTS_ENV
from loom.local.manifests import build_plan
from loom_operator.dispatch import PipelineEntry, PolicyEntry, WorkerEntry, render_resource
from loom_operator.render import Owner, worker_route
from loom_operator.settings import Settings
from tests.e2e_local.conftest import LOOM, ROOT, SAMPLES

IMAGE = "registry.example/loom:test"
NATS = "nats://nats.loom-system:4222"


def operator_objects(namespace: str = "default") -> dict[str, list[dict[str, Any]]]:
    """What the operator creates for each sample, straight from its render functions."""
    resources = load_paths([SAMPLES])
    settings = Settings.from_env().with_overrides(image=IMAGE, nats_url=NATS)
    policies = [PolicyEntry(r.name, r.spec) for r in resources if r.kind == "RouterPolicy"]
    workers = [
        WorkerEntry(r.name, r.spec.worker_type, worker_route(r.spec), tuple(r.spec.served_tiers), r.spec)
        for r in resources
        if r.kind == "Worker"
    ]
    pipelines = [PipelineEntry(r.name, r.spec.pipeline_name) for r in resources if r.kind == "Pipeline"]
    return {
        f"{r.kind.lower()}-{r.name}": render_resource(
            Owner(r.kind, r.name, namespace),
            r,
            settings,
            keda=False,
            policies=policies,
            workers=workers,
            pipelines=pipelines,
        )
        for r in resources
    }


def test_loom_render_writes_exactly_what_the_operator_renders(tmp_path: Path) -> None:
    out = tmp_path / "rendered"
    done = subprocess.run(
        [*LOOM, "render", str(SAMPLES), "-o", str(out), "--image", IMAGE, "--nats-url", NATS],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    expected = operator_objects()
    written = {p.stem: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in out.glob("*.yaml")}
    assert set(written) == set(expected)
    for key, objects in expected.items():
        assert written[key] == objects, key
    kinds = sorted({o["kind"] for objs in written.values() for o in objs})
    assert {"ConfigMap", "Deployment"} <= set(kinds)


def _configmap(objects: list[dict[str, Any]], key: str) -> Any:
    for obj in objects:
        if obj["kind"] == "ConfigMap" and key in obj.get("data", {}):
            return yaml.safe_load(obj["data"][key])
    raise AssertionError(f"no ConfigMap with {key}")


def test_local_mode_uses_the_configuration_the_operator_renders(tmp_path: Path) -> None:
    expected = operator_objects()
    plan = build_plan(
        load_paths([SAMPLES]),
        run_dir=tmp_path,
        ports=itertools.count(1),
        local_llm_url="http://127.0.0.1:1/v1",
    )
    assert plan.process("router").config == _configmap(expected["routerpolicy-default"], "router.yaml")
    for name in ("doc-extractor", "doc-classifier", "doc-summarizer", "report-assembler"):
        rendered = _configmap(expected[f"worker-{name}"], "worker.yaml")
        local = plan.process(f"worker-{name}-local").config
        assert local is not None
        assert local["spec"] == rendered["spec"], name
        # The environment too: the same tier definition and endpoint allow-list, except what local
        # mode adds on purpose (the embedded model server's URL, allowed on loopback).
        (deployment,) = [o for o in expected[f"worker-{name}"] if o["kind"] == "Deployment"]
        pod_env = {
            e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        local_env = plan.process(f"worker-{name}-local").env
        local_tier = json.loads(local_env[TIER_CONFIG_ENV])
        assert local_tier.pop("baseUrl") == "http://127.0.0.1:1/v1"
        assert json.loads(pod_env[TIER_CONFIG_ENV]) == local_tier, name
        local_urls = json.loads(local_env[ENDPOINTS_ENV])["allowedUrls"]
        assert json.loads(pod_env[ENDPOINTS_ENV])["allowedUrls"] + ["http://127.0.0.1:1"] == local_urls
    pipeline = plan.process("pipeline-doc-analysis").config
    assert pipeline is not None
    assert pipeline["spec"] == _configmap(expected["pipeline-doc-analysis"], "pipeline.yaml")["spec"]
