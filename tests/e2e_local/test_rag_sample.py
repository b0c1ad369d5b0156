"""The RAG sample (config/samples-rag): rendered to valid cluster objects, and run with ``loom up``
and the real local model (slow), answering a question about the bundled corpus with the right chunk."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from loom.api import load_paths
from loom_operator.dispatch import PipelineEntry, PolicyEntry, WorkerEntry, render_resource
from loom_operator.render import Owner, worker_route
from loom_operator.settings import Settings
from tests.e2e_local.conftest import LOOM, ROOT, parse_submit_output

RAG = ROOT / "config" / "samples-rag"
IMAGE = "registry.example/loom:test"
NATS = "nats://nats.loom-system:4222"


def operator_objects() -> dict[str, list[dict[str, Any]]]:
    resources = load_paths([RAG])
    settings = Settings.from_env().with_overrides(image=IMAGE, nats_url=NATS)
    policies = [PolicyEntry(r.name, r.spec) for r in resources if r.kind == "RouterPolicy"]
    workers = [
        WorkerEntry(r.name, r.spec.worker_type, worker_route(r.spec), tuple(r.spec.served_tiers), r.spec)
        for r in resources if r.kind == "Worker"
    ]
    pipelines = [PipelineEntry(r.name, r.spec.pipeline_name) for r in resources if r.kind == "Pipeline"]
    return {
        f"{r.kind.lower()}-{r.name}": render_resource(
            Owner(r.kind, r.name, "default"), r, settings, keda=False, policies=policies, workers=workers,
            pipelines=pipelines,
        )
        for r in resources
    }


def test_rag_sample_renders_to_valid_objects(tmp_path: Path) -> None:
    out = tmp_path / "rendered"
    cmd = [*LOOM, "render", str(RAG), "-o", str(out), "--image", IMAGE, "--nats-url", NATS]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    written = {p.stem: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in out.glob("*.yaml")}
    assert written == operator_objects()
    assert set(written) == {"routerpolicy-default", "worker-rag-store", "worker-rag-answerer",
                            "worker-rag-citations", "pipeline-rag-ingest", "pipeline-rag-answer"}
    for objects in written.values():
        for obj in objects:
            kubernetes_validate.validate(obj, "1.33", strict=True)
    store = [o for o in written["worker-rag-store"] if o["kind"] == "Deployment"]
    assert [d["spec"]["replicas"] for d in store] == [1]  # one process owns the DuckDB file


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_rag_sample_answers_with_the_right_chunk(local_up_factory: Any, tmp_path: Path) -> None:
    samples = tmp_path / "samples-rag"
    shutil.copytree(RAG, samples)
    store = samples / "worker-rag-store.yaml"
    manifest = yaml.safe_load(store.read_text())
    manifest["spec"]["backendConfig"]["db_path"] = str(tmp_path / "town.duckdb")
    store.write_text(yaml.safe_dump(manifest))
    up = local_up_factory([samples])
    up.wait_ready()
    nats = ["--nats-url", up.state()["nats_url"], "--run-dir", str(up.run_dir), "--wait", "--timeout", "600"]

    def submit(pipeline: str, context: str) -> dict[str, Any]:
        cmd = [*LOOM, "submit", pipeline, "--pipeline", pipeline, "--context", context, *nats]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=660)
        assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-2000:]}\n{up.log()[-4000:]}"
        return parse_submit_output(done.stdout)

    ingested = submit("rag-ingest", f"jsonl=@{RAG / 'corpus' / 'town_posts.jsonl'}")
    assert ingested["status"] == "completed", ingested
    assert ingested["output"]["ingest"]["added"] == 50
    answered = submit("rag-answer", "question=How often does the harbour ferry depart?")
    assert answered["status"] == "completed", json.dumps(answered)[:3000]
    cited = answered["output"]["cite"]["citations"]
    assert cited and {c["doc_id"] for c in cited} == {"post-ferry"}, answered["output"]
    assert up.stop() == 0
