"""What a platform engineer meets in the first hour, on the real API server under the operator:
printer columns, `loom render` against the cluster, large specs, dangling references, bad names."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.k8s.operator.conftest import GROUP, PLURALS, ROOT, VERSION, Loom, OperatorProcess, wait_for
from tests.support import helm_bin

pytestmark = [pytest.mark.k8s, pytest.mark.usefixtures("loom_operator")]

SAMPLES = ROOT / "config" / "samples"
HASH = "loom.dev/config-hash"
#: The operator under test re-applies everything every 30 s (LOOM_RESYNC_SECONDS): a recovery
#: well within that comes from watching the referenced kind, not from the resync.
WATCH_TIMEOUT = 20


def worker(**extra: Any) -> dict[str, Any]:
    return {
        "systemPrompt": "Classify the document.",
        "tiers": ["local"],
        "defaultModelTier": "local",
        **extra,
    }


def stalled(loom: Loom, kind: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = wait_for(
        lambda: (c := loom.condition(kind, name, "Stalled")) and c["status"] == "True" and c,
        30,
        what=f"{kind}/{name} Stalled",
    )
    return result


def warnings(loom: Loom, name: str) -> list[Any]:
    return [
        e
        for e in loom.core.list_namespaced_event(loom.ns).items
        if e.involved_object.name == name and e.type == "Warning"
    ]


def kubectl_get(kubeconfig: Path, namespace: str, plural: str) -> list[dict[str, str]]:
    """``kubectl get <plural>`` as the user sees it: one dict per row, keyed by column header."""
    out = subprocess.run(
        [helm_bin.kubectl(), "--kubeconfig", str(kubeconfig), "get", plural, "-n", namespace],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    # Columns are aligned: cut each line at the header's column starts (cells may hold spaces).
    starts = [m.start() for m in re.finditer(r"\S+", out[0])]
    names = out[0].split()
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    return [{n: line[a:b].strip() for n, (a, b) in zip(names, bounds, strict=True)} for line in out[1:]]


# ------------------------------------------------------------------ defect 1


def test_schedule_next_column_shows_the_time_not_an_age(loom: Loom, admin_kubeconfig: Path) -> None:
    loom.create("Schedule", "every-hour", {"intervalSeconds": 3600, "goal": {"instruction": "report"}})
    obj = loom.wait_ready("Schedule", "every-hour")
    nxt = obj["status"]["nextScheduleTime"]
    assert datetime.fromisoformat(nxt.replace("Z", "+00:00")) > datetime.now(UTC)
    (row,) = kubectl_get(admin_kubeconfig, loom.ns, "schedules")
    # A `date` column is printed as an age, which is "<invalid>" for a future time.
    assert row["NEXT"] == nxt


# ------------------------------------------------------------------ defect 2


def _apply_samples(loom: Loom) -> list[dict[str, Any]]:
    docs = []
    for path in sorted(SAMPLES.glob("*.yaml")):
        docs += [
            d
            for d in yaml.safe_load_all(path.read_text())
            if d and d.get("apiVersion") == f"{GROUP}/{VERSION}"
        ]
    for doc in docs:
        loom.co.create_namespaced_custom_object(GROUP, VERSION, loom.ns, PLURALS[doc["kind"]], doc)
    return docs


def test_loom_render_matches_what_the_operator_creates(loom: Loom, tmp_path: Path) -> None:
    docs = _apply_samples(loom)
    out = tmp_path / "rendered.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "loom.cli.main", "render", str(SAMPLES), "-n", loom.ns, "-o", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rendered = [o for o in yaml.safe_load_all(out.read_text()) if o]
    config_maps = {o["metadata"]["name"]: o["data"] for o in rendered if o["kind"] == "ConfigMap"}
    hashes = {
        o["metadata"]["name"]: o["spec"]["template"]["metadata"]["annotations"][HASH]
        for o in rendered
        if o["kind"] == "Deployment"
    }
    # An EvalSuite's Job (its name also hashes the image and bus settings, which differ here).
    hashes |= {
        "Job of " + o["metadata"]["labels"]["loom.dev/evalsuite"]: o["spec"]["template"]["metadata"][
            "annotations"
        ][HASH]
        for o in rendered
        if o["kind"] == "Job"
    }
    assert len(config_maps) == len(docs) and len(hashes) >= len(docs)

    def cluster() -> tuple[dict[str, Any], dict[str, str]]:
        cms = {
            c.metadata.name: c.data
            for c in loom.core.list_namespaced_config_map(
                loom.ns, label_selector="app.kubernetes.io/managed-by=loom-operator"
            ).items
        }
        deps = {
            n: d.spec.template.metadata.annotations[HASH]
            for n, d in loom.deployments("app.kubernetes.io/managed-by=loom-operator").items()
        }
        jobs = client.BatchV1Api(loom.core.api_client).list_namespaced_job(
            loom.ns, label_selector="app.kubernetes.io/managed-by=loom-operator"
        )
        return cms, deps | {
            "Job of " + j.metadata.labels["loom.dev/evalsuite"]: j.spec.template.metadata.annotations[HASH]
            for j in jobs.items
        }

    # The router's catalog fills as the Workers are seen: wait for the operator to settle.
    wait_for(
        lambda: cluster() == (config_maps, hashes), 90, what="the cluster's children equal loom render's"
    )
    live_cms, live_hashes = cluster()
    for name, data in config_maps.items():
        assert live_cms[name] == data, name  # byte for byte
    assert live_hashes == hashes


# ------------------------------------------------------------------ defect 3


def test_a_huge_system_prompt_is_rejected_with_where_knowledge_belongs(loom: Loom) -> None:
    with pytest.raises(ApiException) as info:
        loom.create("Worker", "huge", worker(systemPrompt="x" * 900_000))
    assert info.value.status == 422
    message = json.loads(info.value.body)["message"]
    assert "spec.systemPrompt" in message and "at most 65536 characters" in message
    assert "knowledgeSources" in message


def test_the_operator_keeps_no_second_copy_of_the_spec(loom: Loom) -> None:
    prompt = "Answer from the rules below.\n" + "rule: be brief. " * 3000  # ~48 KB, within bounds
    loom.create("Worker", "big", worker(systemPrompt=prompt))
    obj = loom.wait_ready("Worker", "big")
    kopf_status = obj["status"].get("kopf") or {}
    assert "lastHandledConfiguration" not in kopf_status
    assert kopf_status.get("lastHandledDigest")
    assert "be brief" not in json.dumps(obj["status"])
    assert not any(k.startswith("kopf.") for k in (obj["metadata"].get("annotations") or {}))
    # Edits are still seen as edits: the prompt change rolls the tier.
    before = loom.apps.read_namespaced_deployment("big-local", loom.ns).spec.template.metadata.annotations[
        HASH
    ]
    loom.patch("Worker", "big", {"systemPrompt": prompt + "rule: cite the source."})
    wait_for(
        lambda: (
            loom.apps.read_namespaced_deployment("big-local", loom.ns).spec.template.metadata.annotations[
                HASH
            ]
            != before
        ),
        60,
        what="the edit rolled out",
    )
    assert "cite the source" not in json.dumps(loom.wait_ready("Worker", "big")["status"])


def test_a_child_the_server_refuses_stalls_with_a_warning_event(loom: Loom) -> None:
    # A valid spec whose rendered ConfigMap exceeds the API server's 1 MiB limit.
    schema = {"type": "object", "description": "d" * 1_100_000}
    loom.create("Worker", "toolarge", worker(inputSchema=schema))
    condition = stalled(loom, "Worker", "toolarge")
    assert condition["reason"] == "WriteRefused"
    assert "ConfigMap 'toolarge-config'" in condition["message"]
    events = wait_for(lambda: warnings(loom, "toolarge"), 20, what="Warning event")
    assert any(e.reason == "WriteRefused" for e in events)
    assert not loom.deployments("loom.dev/worker=toolarge")
    obj = loom.get("Worker", "toolarge")
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]


# ------------------------------------------------------------------ defect 4


def test_missing_worker_type_and_pipeline_stall_until_they_appear(loom: Loom) -> None:
    loom.create(
        "Pipeline",
        "docs",
        {"pipelineStages": [{"name": "read", "workerType": "no-such-worker"}]},
    )
    loom.create("Schedule", "nightly", {"cron": "0 2 * * *", "goal": {"pipeline": "no-such-pipeline"}})
    pipe = stalled(loom, "Pipeline", "docs")
    assert pipe["reason"] == "UnknownWorkerType" and "'no-such-worker'" in pipe["message"]
    sched = stalled(loom, "Schedule", "nightly")
    assert sched["reason"] == "UnknownPipeline" and "'no-such-pipeline'" in sched["message"]
    assert loom.condition("Pipeline", "docs", "Ready")["status"] == "False"  # type: ignore[index]
    assert not loom.deployments("loom.dev/pipeline=docs")
    assert {e.reason for e in warnings(loom, "nightly")} >= {"UnknownPipeline"}

    loom.create("Worker", "no-such-worker", worker())
    loom.wait_ready("Pipeline", "docs", timeout=WATCH_TIMEOUT)
    loom.create(
        "Pipeline", "no-such-pipeline", {"pipelineStages": [{"name": "a", "workerType": "no-such-worker"}]}
    )
    loom.wait_ready("Schedule", "nightly", timeout=WATCH_TIMEOUT)

    # And back: the worker type goes away, the pipelines that use it stall again.
    loom.delete("Worker", "no-such-worker")
    assert "'no-such-worker'" in stalled(loom, "Pipeline", "docs")["message"]


# ------------------------------------------------------------------ defect 5


@pytest.mark.parametrize(
    ("kind", "name", "spec", "words"),
    [
        ("Worker", "doc.classifier", worker(), "start with a letter"),
        ("Worker", "w" * 58, worker(), "at most 42 characters"),
        ("Worker", "w" * 41, worker(), "at most 40 characters unless spec.name is set"),
        ("Worker", "9lives", worker(), "start with a letter"),
        ("Pipeline", "incoming", {"pipelineStages": [{"name": "a", "workerType": "w"}]}, "'incoming'"),
        ("Schedule", "a.b", {"intervalSeconds": 60, "goal": {}}, "at most 53 characters"),
        ("RouterPolicy", "x" * 57, {}, "at most 56 characters"),
    ],
    ids=[
        "dot",
        "too-long",
        "worker-type",
        "digit-first",
        "reserved-pipeline",
        "schedule-dot",
        "policy-too-long",
    ],
)
def test_bad_names_are_rejected_at_apply_time_naming_metadata_name(
    loom: Loom, kind: str, name: str, spec: dict[str, Any], words: str
) -> None:
    with pytest.raises(ApiException) as info:
        loom.create(kind, name, spec)
    assert info.value.status == 422
    message = json.loads(info.value.body)["message"]
    assert "metadata.name must" in message and words in message
    assert "spec.name:" not in message


def test_a_long_name_is_fine_when_spec_name_sets_the_worker_type(loom: Loom) -> None:
    name = "w" * 42
    loom.create("Worker", name, worker(name="short-type"))
    loom.wait_ready("Worker", name)
    assert sorted(loom.deployments(f"loom.dev/worker={name}")) == [f"{name}-local"]


# ------------------------------------------------------------------ paper cuts


def test_a_stalled_worker_counts_the_replicas_still_running(loom: Loom) -> None:
    loom.create("RouterPolicy", "default", {"tiers": [{"name": "local"}]})
    loom.create("Worker", "w", worker())
    assert loom.wait_ready("Worker", "w")["status"]["replicaSummary"] == "1/1"
    loom.patch("Worker", "w", {"tiers": ["local", "frontier"]})
    assert stalled(loom, "Worker", "w")["reason"] == "UnknownTier"
    obj = wait_for(
        lambda: (
            (o := loom.get("Worker", "w"))["status"]["observedGeneration"] == o["metadata"]["generation"]
            and o
        ),
        30,
        what="status of the stalled generation",
    )
    # w-local keeps running (a bad edit never churns children), and REPLICAS says so.
    assert obj["status"]["replicaSummary"] == "1/1"
    assert sorted(loom.deployments("loom.dev/worker=w")) == ["w-local"]


def test_operator_log_lines_name_their_resource(loom: Loom, loom_operator: OperatorProcess) -> None:
    loom.create("Worker", "logged", worker())
    loom.wait_ready("Worker", "logged")
    wait_for(lambda: f"[{loom.ns}/logged]" in loom_operator.log(), 20, what="[namespace/name] in the log")
