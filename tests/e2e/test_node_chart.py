"""The chart and the samples on real pods: the image built from the Dockerfile, run by a kubelet.

Runs only with ``LOOM_E2E_PROVIDER=node`` (``make test-node``): the envtest control plane plus
one real node (``tests.k8s.node``), every image preloaded into containerd, nothing pulled.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from loom.llm.local_server import LocalLlamaServer
from tests.e2e_local.test_local_mode import assert_completed_report
from tests.helm import helm_bin
from tests.k8s.envtest import REPO_ROOT
from tests.k8s.node import NodeCluster

pytestmark = [pytest.mark.k8s, pytest.mark.node]

CHART = REPO_ROOT / "helm" / "loom"
SAMPLES = REPO_ROOT / "config" / "samples"
READY_TIMEOUT = 240.0
LOOM_KINDS = ("workers", "pipelines", "routerpolicies", "schedules")


def split_ref(ref: str) -> tuple[str, str]:
    """``repo:tag`` -> (repo, tag); the tag is after the last colon of the last path segment."""
    repo, _, tag = ref.rpartition(":")
    return repo, tag


def wait_for(probe: Callable[[], tuple[bool, Any]], *, timeout: float, what: str) -> Any:
    """Poll ``probe`` (-> done, detail) every second; return the detail, or fail with the last one."""
    deadline = time.monotonic() + timeout
    while True:
        done, detail = probe()
        if done:
            return detail
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last: {detail!r}")
        time.sleep(1.0)


@pytest.fixture(scope="module")
def core(node_cluster: NodeCluster) -> Iterator[client.CoreV1Api]:
    with config.new_client_from_config(str(node_cluster.kubeconfig)) as api:
        yield client.CoreV1Api(api)


def _pod_logs(node: NodeCluster, namespace: str, name: str) -> str:
    return node.kubectl("-n", namespace, "logs", name)


def _run_pod(node: NodeCluster, core: client.CoreV1Api, namespace: str, name: str, container: dict) -> str:
    """Run one pod to completion on the node and return its log; fail with its status otherwise."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"restartPolicy": "Never", "containers": [container]},
    }
    core.create_namespaced_pod(namespace, pod)

    def finished() -> tuple[bool, str]:
        phase = core.read_namespaced_pod(name, namespace).status.phase
        return phase in ("Succeeded", "Failed"), phase

    phase = wait_for(finished, timeout=READY_TIMEOUT, what=f"pod {name} to finish")
    logs = _pod_logs(node, namespace, name)
    assert phase == "Succeeded", (
        f"pod {name} {phase}:\n{logs}\n{core.read_namespaced_pod(name, namespace).status}"
    )
    return logs


@pytest.fixture
def scratch_namespace(core: client.CoreV1Api) -> Iterator[str]:
    name = f"node-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name}})
    try:
        yield name
    finally:
        core.delete_namespace(name)


def test_image_runs_loom_help_as_user_10001(
    node_cluster: NodeCluster, core: client.CoreV1Api, scratch_namespace: str
) -> None:
    """The image built from the Dockerfile starts on a real kubelet: entrypoint, user, venv."""
    image = node_cluster.images["LOOM_IMAGE"]
    help_text = _run_pod(
        node_cluster,
        core,
        scratch_namespace,
        "loom-help",
        {"name": "loom", "image": image, "imagePullPolicy": "Never", "args": ["--help"]},
    )
    assert "usage: loom" in help_text
    for command in ("worker", "router", "pipeline", "operator"):
        assert command in help_text
    ids = _run_pod(
        node_cluster,
        core,
        scratch_namespace,
        "loom-id",
        {
            "name": "loom",
            "image": image,
            "imagePullPolicy": "Never",
            "command": ["python", "-c", "import os; print(os.getuid(), os.getgid())"],
        },
    )
    assert ids.split() == ["10001", "10001"]


def _helm(node: NodeCluster, *args: str, timeout: float = 300) -> str:
    result = subprocess.run(
        [helm_bin.helm(), f"--kubeconfig={node.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _not_ready(node: NodeCluster, namespace: str) -> list[str]:
    """Loom resources whose Ready condition is not True, and pods not Running+Ready (with why)."""
    pending: list[str] = []
    for kind in LOOM_KINDS:
        items = json.loads(node.kubectl("-n", namespace, "get", kind, "-o", "json"))["items"]
        for item in items:
            conditions = item.get("status", {}).get("conditions", [])
            ready = next((c for c in conditions if c["type"] == "Ready"), None)
            if not ready or ready["status"] != "True":
                pending.append(f"{kind}/{item['metadata']['name']}: {ready and ready.get('message')}")
    for pod in _pods(node, namespace):
        conditions = pod["status"].get("conditions", [])
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        if pod["status"].get("phase") != "Running" or not ready:
            states = [c.get("state") for c in pod["status"].get("containerStatuses", [])]
            pending.append(f"pod/{pod['metadata']['name']}: {pod['status'].get('phase')} {states}")
    return pending


def _pods(node: NodeCluster, namespace: str) -> list[dict[str, Any]]:
    return list(json.loads(node.kubectl("-n", namespace, "get", "pods", "-o", "json"))["items"])


SAMPLE_WORKERS = {"doc-extractor", "doc-classifier", "doc-summarizer", "report-assembler"}


def _router_catalog(node: NodeCluster, namespace: str) -> tuple[bool, list[str]]:
    """Whether the router's rendered config lists every sample worker (and which it lists)."""
    maps = json.loads(node.kubectl("-n", namespace, "get", "configmaps", "-o", "json"))["items"]
    for cm in maps:
        text = (cm.get("data") or {}).get("router.yaml")
        if text:
            listed = sorted((yaml.safe_load(text).get("workers") or {}).keys())
            return set(listed) >= SAMPLE_WORKERS, listed
    return False, []


def _wait_serving(node: NodeCluster, release: Release) -> None:
    """Every sample Ready, and the router rolled out with all four workers in its catalog.

    Ready alone is not enough: the RouterPolicy can report Ready while its router still runs a
    catalog rendered before every Worker existed (goals then fail with unknown_worker_type).
    """

    def all_ready() -> tuple[bool, list[str]]:
        pending = _not_ready(node, release.namespace)
        return not pending, pending

    wait_for(all_ready, timeout=READY_TIMEOUT, what="every sample Ready on Running pods")
    wait_for(
        lambda: _router_catalog(node, release.namespace),
        timeout=READY_TIMEOUT,
        what="the router's catalog to list the four sample workers",
    )
    node.kubectl(
        "-n",
        release.namespace,
        "rollout",
        "status",
        "deployment/default-router",
        f"--timeout={int(READY_TIMEOUT)}s",
    )
    wait_for(all_ready, timeout=READY_TIMEOUT, what="every pod Ready after the router's rollout")


@dataclass(frozen=True)
class Release:
    """The chart installed with bundled NATS and the samples applied, in ``namespace``."""

    name: str
    namespace: str
    nats_url: str


@pytest.fixture(scope="module")
def model_server(node_cluster: NodeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real llama.cpp server with SmolLM2-135M, on the node's address so pods reach it."""
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with LocalLlamaServer(host=node_cluster.node_ip, log_path=log) as server:
        yield server.base_url


def _samples_for_cluster(model_url: str, model_host: str) -> str:
    """config/samples/ as a cluster runs them: tier `local` pointed at a reachable model server.

    The samples leave tier `local` on the embedded model of local mode; on a cluster its
    baseUrl must name a server the pods reach, allowed by modelEndpoints (docs/security.md).
    """
    docs = []
    for path in sorted(SAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "RouterPolicy":
                for tier in doc["spec"]["tiers"]:
                    if tier["name"] == "local":
                        tier["baseUrl"] = model_url
                origin = model_url.removesuffix("/v1")
                doc["spec"]["modelEndpoints"] = {
                    "allowedUrls": [origin],
                    "allowedNetworks": [f"{model_host}/32"],
                }
            if doc:
                docs.append(doc)
    return yaml.safe_dump_all(docs)


@pytest.fixture(scope="module")
def release(node_cluster: NodeCluster, model_server: str) -> Iterator[Release]:
    """`helm install` (bundled NATS, images preloaded, pullPolicy Never), then the samples."""
    repo, tag = split_ref(node_cluster.images["LOOM_IMAGE"])
    nats_repo, nats_tag = split_ref(node_cluster.images["NATS_IMAGE"])
    name, namespace = "loom", f"loom-{uuid.uuid4().hex[:6]}"
    values = {
        "image": {"repository": repo, "tag": tag, "pullPolicy": "Never"},
        "nats": {
            "bundled": {
                "enabled": True,
                "image": {"repository": nats_repo, "tag": nats_tag, "pullPolicy": "Never"},
                "persistence": {"enabled": False},
            }
        },
    }
    values_file = node_cluster.kubeconfig.parent / f"values-{namespace}.yaml"
    values_file.write_text(yaml.safe_dump(values))
    _helm(
        node_cluster,
        "install",
        name,
        str(CHART),
        "--namespace",
        namespace,
        "--create-namespace",
        "--values",
        str(values_file),
        "--wait",
        "--timeout",
        f"{int(READY_TIMEOUT)}s",
    )
    try:
        node_cluster.kubectl(
            "-n",
            namespace,
            "apply",
            "-f",
            "-",
            input=_samples_for_cluster(model_server, node_cluster.node_ip),
        )
        cluster_ip = node_cluster.kubectl(
            "-n", namespace, "get", "service", f"{name}-nats", "-o", "jsonpath={.spec.clusterIP}"
        )
        # The test process reaches the in-cluster NATS through kube-proxy, like any node would.
        yield Release(name, namespace, f"nats://{cluster_ip}:4222")
    finally:
        subprocess.run(
            [helm_bin.helm(), f"--kubeconfig={node_cluster.kubeconfig}", "uninstall", name, "-n", namespace],
            capture_output=True,
            check=False,
            timeout=120,
        )
        node_cluster.kubectl("delete", "namespace", namespace, "--wait=false")


def test_helm_install_and_samples_become_ready_on_real_pods(
    node_cluster: NodeCluster, release: Release
) -> None:
    """Every sample resource Ready, every pod Running and Ready on the real node, on our images."""

    def all_ready() -> tuple[bool, list[str]]:
        pending = _not_ready(node_cluster, release.namespace)
        return not pending, pending

    wait_for(all_ready, timeout=READY_TIMEOUT, what="every sample Ready on Running pods")
    pods = _pods(node_cluster, release.namespace)
    by_component: dict[str, list[dict[str, Any]]] = {}
    for pod in pods:
        assert pod["spec"]["nodeName"] == "loom-node-0"
        component = pod["metadata"]["labels"].get("app.kubernetes.io/component", pod["metadata"]["name"])
        by_component.setdefault(component, []).append(pod)
    images = {c["image"] for pod in pods for c in pod["spec"]["containers"]}
    assert images == {node_cluster.images["LOOM_IMAGE"], node_cluster.images["NATS_IMAGE"]}
    # The operator, NATS, the router, the pipeline, the scheduler and four workers.
    names = sorted(pod["metadata"]["name"].rsplit("-", 2)[0] for pod in pods)
    for expected in (
        "loom-operator",
        "default-router",
        "doc-analysis-pipeline",
        "hourly-status-scheduler",
        "doc-classifier-local",
        "doc-extractor-local",
        "doc-summarizer-local",
        "report-assembler-local",
    ):
        assert expected in names, names
    assert any(pod["metadata"]["name"] == f"{release.name}-nats-0" for pod in pods)


def test_goal_completes_through_in_cluster_pods_with_the_real_model(
    node_cluster: NodeCluster, release: Release
) -> None:
    """A goal to doc-analysis runs through the router, the worker pods and the pipeline pod."""

    _wait_serving(node_cluster, release)
    done = subprocess.run(
        [
            str(REPO_ROOT / ".venv" / "bin" / "loom"),
            "submit",
            "Analyse this document",
            "--pipeline",
            "doc-analysis",
            "--context",
            f"text=@{SAMPLES / 'example.txt'}",
            "--wait",
            "--timeout",
            "240",
            "--nats-url",
            release.nats_url,
        ],
        capture_output=True,
        text=True,
        timeout=270,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-2000:]}"
    goal, _ = json.JSONDecoder().raw_decode(done.stdout.lstrip())
    assert_completed_report(goal)
    assert goal["token_usage"]["completion_tokens"] > 0


def _consumer(monitor_url: str, name: str) -> dict[str, Any] | None:
    """One JetStream consumer's state from the NATS monitor (/jsz)."""
    with urllib.request.urlopen(f"{monitor_url}/jsz?consumers=true", timeout=5) as resp:
        doc = json.loads(resp.read())
    for account in doc.get("account_details") or []:
        for stream in account.get("stream_detail") or []:
            for consumer in stream.get("consumer_detail") or []:
                if consumer["name"] == name:
                    return dict(consumer)
    return None


def _submit(release: Release, timeout: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            str(REPO_ROOT / ".venv" / "bin" / "loom"),
            "submit",
            "Analyse this document",
            "--pipeline",
            "doc-analysis",
            "--context",
            f"text=@{SAMPLES / 'example.txt'}",
            "--wait",
            "--timeout",
            str(timeout),
            "--nats-url",
            release.nats_url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_worker_pod_force_deleted_mid_task_loses_nothing(node_cluster: NodeCluster, release: Release) -> None:
    """`kubectl delete pod --grace-period=0 --force` on the summarizer while it holds a task: the
    task is redelivered (after its ack wait) to the replacement pod and the goal completes."""
    monitor = release.nats_url.replace("nats://", "http://").replace(":4222", ":8222")
    consumer = "worker-doc-summarizer-local"
    _wait_serving(node_cluster, release)
    before = {
        p["metadata"]["name"]
        for p in _pods(node_cluster, release.namespace)
        if p["metadata"]["name"].startswith("doc-summarizer-local-")
    }
    assert len(before) == 1, before
    proc = _submit(release, 240)
    try:

        def holding() -> tuple[bool, Any]:
            state = _consumer(monitor, consumer)
            return bool(state and state["num_ack_pending"] >= 1), state

        wait_for(holding, timeout=120, what=f"{consumer} to hold a task")
        node_cluster.kubectl(
            "-n", release.namespace, "delete", "pod", *sorted(before), "--grace-period=0", "--force"
        )
        out, err = proc.communicate(timeout=250)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, f"{out[-3000:]}\n{err[-2000:]}"
    goal, _ = json.JSONDecoder().raw_decode(out.lstrip())
    assert_completed_report(goal)
    after = {
        p["metadata"]["name"]
        for p in _pods(node_cluster, release.namespace)
        if p["metadata"]["name"].startswith("doc-summarizer-local-")
    }
    assert after and not (after & before), (before, after)
