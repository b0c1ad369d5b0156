"""The chart and the samples on real pods: the image built from the Dockerfile, run by a kubelet.

Part of every ``pytest`` run: the envtest control plane plus one real node (``tests.k8s.node``),
every image preloaded into containerd, nothing pulled. One ``helm install`` (module fixture
``release``) serves the tests in file order; the last two upgrade and uninstall it.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from loom.llm.local_server import LocalLlamaServer
from loom_operator.eval_results import EVAL_FAILED
from tests.e2e_local.test_local_mode import assert_completed_report
from tests.k8s.envtest import REPO_ROOT
from tests.k8s.node import NodeCluster
from tests.support import helm_bin

pytestmark = [pytest.mark.k8s, pytest.mark.node]

CHART = REPO_ROOT / "helm" / "loom"
SAMPLES = REPO_ROOT / "config" / "samples"
READY_TIMEOUT = 420.0
LOOM_KINDS = ("workers", "pipelines", "routerpolicies", "schedules", "evalsuites")
# The bundled NATS's runAsUser (chart values nats.bundled.podSecurityContext).
NATS_UID = 1000


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
    """Loom resources whose Ready condition is not True, and pods not Running+Ready (with why).

    A failed EvalSuite is a verdict, not a wait: its Job of this spec never runs again, so the test
    fails at once with the verdict instead of waiting out its timeout."""
    pending: list[str] = []
    for kind in LOOM_KINDS:
        items = json.loads(node.kubectl("-n", namespace, "get", kind, "-o", "json"))["items"]
        for item in items:
            conditions = item.get("status", {}).get("conditions", [])
            ready = next((c for c in conditions if c["type"] == "Ready"), None)
            if ready and ready.get("reason") == EVAL_FAILED:
                pytest.fail(f"{kind}/{item['metadata']['name']} failed: {ready.get('message')}")
            if not ready or ready["status"] != "True":
                pending.append(f"{kind}/{item['metadata']['name']}: {ready and ready.get('message')}")
    for pod in _pods(node, namespace):
        if _job_pod(pod):
            continue
        conditions = pod["status"].get("conditions", [])
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        if pod["status"].get("phase") != "Running" or not ready:
            states = [c.get("state") for c in pod["status"].get("containerStatuses", [])]
            pending.append(f"pod/{pod['metadata']['name']}: {pod['status'].get('phase')} {states}")
    return pending


def _job_pod(pod: dict[str, Any]) -> bool:
    """A pod of a Job (an EvalSuite's): it runs to completion and never serves."""
    return any(ref.get("kind") == "Job" for ref in pod["metadata"].get("ownerReferences", []))


def _pods(node: NodeCluster, namespace: str) -> list[dict[str, Any]]:
    return list(json.loads(node.kubectl("-n", namespace, "get", "pods", "-o", "json"))["items"])


SAMPLE_WORKERS = {"doc-extractor", "doc-classifier", "doc-summarizer", "report-assembler"}
# A processor tier of the tests' own, installed with the samples (see _slow_worker_manifest).
SLOW_WORKER = "slow-echo"
SLOW_DEPLOYMENT = f"{SLOW_WORKER}-local"
SLOW_CONSUMER = f"worker-{SLOW_WORKER}-local"
SERVED_WORKERS = SAMPLE_WORKERS | {SLOW_WORKER}
# The slow tier's SIGTERM drain and ack grace (`loom worker --drain-grace-seconds`, default 25 s,
# and `--ack-grace-seconds`, default 30 s), set short through the Worker's env to keep the tests short.
DRAIN_GRACE = 8
ACK_GRACE = 10


def _router_catalog(node: NodeCluster, namespace: str, workers: set[str]) -> tuple[bool, list[str]]:
    """Whether the router's rendered config lists every one of ``workers`` (and which it lists)."""
    maps = json.loads(node.kubectl("-n", namespace, "get", "configmaps", "-o", "json"))["items"]
    for cm in maps:
        text = (cm.get("data") or {}).get("router.yaml")
        if text:
            listed = sorted((yaml.safe_load(text).get("workers") or {}).keys())
            return set(listed) >= workers, listed
    return False, []


def _wait_serving(node: NodeCluster, release: Release, workers: set[str] = SERVED_WORKERS) -> None:
    """Every resource Ready, and the router rolled out with ``workers`` in its catalog.

    Ready alone is not enough: the RouterPolicy can report Ready while its router still runs a
    catalog rendered before every Worker existed (goals then fail with unknown_worker_type).
    """

    def all_ready() -> tuple[bool, list[str]]:
        pending = _not_ready(node, release.namespace)
        return not pending, pending

    wait_for(all_ready, timeout=READY_TIMEOUT, what="every sample Ready on Running pods")
    wait_for(
        lambda: _router_catalog(node, release.namespace, workers),
        timeout=READY_TIMEOUT,
        what=f"the router's catalog to list {sorted(workers)}",
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
    """The chart installed with bundled NATS and the samples applied, in ``namespace``.

    ``bus_args``: the ``loom`` client flags of the bus identity the test process uses (the
    operator-generated admin credentials when the chart's NATS auth is on, else none).
    """

    name: str
    namespace: str
    nats_url: str
    bus_args: tuple[str, ...]

    @property
    def monitor_url(self) -> str:
        return self.nats_url.replace("nats://", "http://").replace(":4222", ":8222")

    def loom(self, *args: str) -> list[str]:
        """argv of a ``loom`` client command against this release's bus."""
        # The venv running the tests (`make test-cold` puts it outside the work tree).
        loom = Path(sys.executable).parent / "loom"
        return [str(loom), *args, "--nats-url", self.nats_url, *self.bus_args]


def _chart_nats_auth_mode() -> str:
    """``nats.auth.mode`` of the chart's defaults (``none`` when the chart has no such value)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    return str(((values.get("nats") or {}).get("auth") or {}).get("mode", "none"))


def _admin_bus_args(node: NodeCluster, name: str, namespace: str) -> tuple[str, ...]:
    """Client flags of the admin identity the operator writes to ``<release>-nats-auth-admin``."""

    def secret() -> tuple[bool, Any]:
        found = json.loads(node.kubectl("-n", namespace, "get", "secrets", "-o", "json"))["items"]
        for item in found:
            if item["metadata"]["name"] == f"{name}-nats-auth-admin":
                return True, {k: base64.b64decode(v).decode() for k, v in item["data"].items()}
        return False, sorted(item["metadata"]["name"] for item in found)

    creds = wait_for(secret, timeout=READY_TIMEOUT, what="the operator's admin bus credentials")
    return (
        "--nats-user",
        creds["user"],
        # with '=': a generated password may start with '-', which argparse would take for an option
        f"--nats-password={creds['password']}",
        "--nats-inbox-prefix",
        creds["inboxPrefix"],
    )


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
    # The chart's default persistence: the JetStream store survives a NATS restart
    # (test_readiness_follows_the_nats_connection), on a hostPath volume of the node.
    node_cluster.host_path_volume(
        f"{namespace}-nats", claim=(namespace, f"data-{name}-nats-0"), size="10Gi", owner=NATS_UID
    )
    values = {
        "image": {"repository": repo, "tag": tag, "pullPolicy": "Never"},
        "nats": {
            "bundled": {
                "enabled": True,
                "image": {"repository": nats_repo, "tag": nats_tag, "pullPolicy": "Never"},
                "persistence": {"enabled": True},
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
            input=_samples_for_cluster(model_server, node_cluster.node_ip)
            + "---\n"
            + _slow_worker_manifest(),
        )
        cluster_ip = node_cluster.kubectl(
            "-n", namespace, "get", "service", f"{name}-nats", "-o", "jsonpath={.spec.clusterIP}"
        )
        auth = _chart_nats_auth_mode() == "generated"
        bus_args = _admin_bus_args(node_cluster, name, namespace) if auth else ()
        # The test process reaches the in-cluster NATS through kube-proxy, like any node would.
        yield Release(name, namespace, f"nats://{cluster_ip}:4222", bus_args)
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


def _proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _root_mount_options(pid: int) -> set[str]:
    """Mount options of the container's ``/`` as its own process sees it."""
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            return set(fields[5].split(","))
    raise AssertionError(f"no / in /proc/{pid}/mountinfo")


def test_loom_containers_run_as_10001_read_only_without_capabilities(
    node_cluster: NodeCluster, release: Release
) -> None:
    """Every running container of our image, checked in /proc of its process on the node: uid and
    gid 10001, no capabilities at all (effective, permitted, bounding), no privilege gain, and
    a read-only root filesystem."""
    _wait_serving(node_cluster, release)
    checked = []
    for pod in _pods(node_cluster, release.namespace):
        for status in pod["status"].get("containerStatuses", []):
            if status["image"] != node_cluster.images["LOOM_IMAGE"] or "running" not in status["state"]:
                continue
            pid = node_cluster.container_pid(status["containerID"])
            proc = _proc_status(pid)
            where = f"{pod['metadata']['name']}/{status['name']} (pid {pid})"
            assert proc["Uid"].split() == ["10001"] * 4, (where, proc["Uid"])
            assert proc["Gid"].split() == ["10001"] * 4, (where, proc["Gid"])
            for caps in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
                assert int(proc[caps], 16) == 0, (where, caps, proc[caps])
            assert proc["NoNewPrivs"] == "1", where
            assert "ro" in _root_mount_options(pid), where
            checked.append(pod["metadata"]["labels"].get("app.kubernetes.io/component", where))
    # The operator, router, pipeline, scheduler and the four workers.
    assert len(checked) >= 8, checked


def test_goal_completes_through_in_cluster_pods_with_the_real_model(
    node_cluster: NodeCluster, release: Release
) -> None:
    """A goal to doc-analysis runs through the router, the worker pods and the pipeline pod."""

    _wait_serving(node_cluster, release)
    done = subprocess.run(
        release.loom(
            "submit",
            "Analyse this document",
            "--pipeline",
            "doc-analysis",
            "--context",
            f"text=@{SAMPLES / 'example.txt'}",
            "--wait",
            "--timeout",
            "240",
        ),
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


# --------------------------------------------------------------------------- a slow worker tier


def _slow_worker_manifest() -> str:
    """A processor tier whose tasks take the payload's ``sleep`` seconds (loom.contrib.noop.EchoBackend),
    autoscaled with small cooldown and polling values so the test sees a whole scaling cycle."""
    worker = {
        "apiVersion": "loom.dev/v1alpha1",
        "kind": "Worker",
        "metadata": {"name": SLOW_WORKER},
        "spec": {
            "description": "Echoes its payload after the payload's `sleep` seconds.",
            "workerKind": "processor",
            "processingBackend": "loom.contrib.noop.EchoBackend",
            "defaultModelTier": "local",
            "tiers": ["local"],
            "inputSchema": {"type": "object"},
            "outputSchema": {"type": "object"},
            # Above the drain test's longest task (DRAIN_GRACE + 4 s); the ack wait, after which a
            # force-deleted pod's tasks are redelivered, is this plus ACK_GRACE.
            "timeoutSeconds": 20,
            "env": {"LOOM_DRAIN_GRACE_SECONDS": str(DRAIN_GRACE), "LOOM_ACK_GRACE_SECONDS": str(ACK_GRACE)},
            "maxInFlight": 2,
            "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}},
            "autoscaling": {
                "minReplicas": 1,
                "maxReplicas": 3,
                "targetLag": 2,
                "cooldownSeconds": 20,
                "pollingSeconds": 2,
            },
        },
    }
    return yaml.safe_dump(worker)


def _tier_pods(node: NodeCluster, release: Release) -> list[dict[str, Any]]:
    return [
        p
        for p in _pods(node, release.namespace)
        if p["metadata"]["name"].startswith(f"{SLOW_DEPLOYMENT}-")
        and not p["metadata"].get("deletionTimestamp")
    ]


def _ready(pod: dict[str, Any]) -> bool:
    conditions = pod["status"].get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _deployment(node: NodeCluster, namespace: str, name: str) -> dict[str, Any]:
    return dict(json.loads(node.kubectl("-n", namespace, "get", "deployment", name, "-o", "json")))


def _wait_replicas(node: NodeCluster, release: Release, want: int, timeout: float = READY_TIMEOUT) -> None:
    """The slow tier's Deployment at ``want`` replicas, with exactly ``want`` Ready pods."""

    def settled() -> tuple[bool, Any]:
        spec = _deployment(node, release.namespace, SLOW_DEPLOYMENT)["spec"]["replicas"]
        pods = _tier_pods(node, release)
        ready = [p["metadata"]["name"] for p in pods if _ready(p)]
        return spec == want and len(pods) == want and len(ready) == want, (spec, ready)

    wait_for(settled, timeout=timeout, what=f"{SLOW_DEPLOYMENT} at {want} Ready replica(s)")


def _submit_task(release: Release, payload: dict[str, Any], *, wait: float | None) -> subprocess.Popen[str]:
    args = ["submit", "--worker-type", SLOW_WORKER, "--tier", "local", "--payload", json.dumps(payload)]
    if wait is not None:
        args += ["--wait", "--timeout", str(wait)]
    return subprocess.Popen(release.loom(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _task_result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, f"{out[-3000:]}\n{err[-2000:]}"
    result, _ = json.JSONDecoder().raw_decode(out.lstrip())
    return dict(result)


def test_worker_pod_force_deleted_mid_task_loses_nothing(node_cluster: NodeCluster, release: Release) -> None:
    """`kubectl delete pod --grace-period=0 --force` on a worker pod while it holds two tasks: no
    drain, nothing handed back; JetStream redelivers both after their ack wait to the replacement
    pod, and both complete there (attempt 2)."""
    _wait_serving(node_cluster, release)
    _wait_replicas(node_cluster, release, 1)
    (victim,) = [p["metadata"]["name"] for p in _tier_pods(node_cluster, release)]
    # Long enough that neither task can finish between "held" and the kill (the tier's timeout is 20 s).
    procs = [_submit_task(release, {"sleep": 15, "n": n}, wait=200) for n in ("a", "b")]
    try:

        def holding_both() -> tuple[bool, Any]:
            state = _consumer(release.monitor_url, SLOW_CONSUMER)
            return bool(state and state["num_ack_pending"] == 2), state

        wait_for(holding_both, timeout=60, what=f"{victim} to hold both tasks")
        node_cluster.kubectl("-n", release.namespace, "delete", "pod", victim, "--grace-period=0", "--force")
        results = [_task_result(proc, 200) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert sorted(r["output"]["echo"]["n"] for r in results) == ["a", "b"], results
    for result in results:
        assert result["status"] == "completed", result
        assert result["attempt"] == 2, result
    pods = [p["metadata"]["name"] for p in _tier_pods(node_cluster, release)]
    assert victim not in pods, pods


def test_sigterm_drains_a_worker_pod_and_loses_nothing(node_cluster: NodeCluster, release: Release) -> None:
    """A worker pod deleted the normal way (SIGTERM, the chart's grace period) while it holds two
    tasks, as the worker documents: the short one is finished by the draining pod (attempt 1);
    the one longer than the drain grace is handed back and finished by the replacement pod
    (attempt 2). Both results arrive; nothing is lost."""
    _wait_replicas(node_cluster, release, 1)
    (victim,) = [p["metadata"]["name"] for p in _tier_pods(node_cluster, release)]
    short = _submit_task(release, {"sleep": 3, "n": "short"}, wait=200)
    long = _submit_task(release, {"sleep": DRAIN_GRACE + 4, "n": "long"}, wait=200)
    try:

        def holding_both() -> tuple[bool, Any]:
            state = _consumer(release.monitor_url, SLOW_CONSUMER)
            return bool(state and state["num_ack_pending"] == 2), state

        wait_for(holding_both, timeout=60, what=f"{victim} to hold both tasks")
        node_cluster.kubectl("-n", release.namespace, "delete", "pod", victim, "--wait=false")
        finished = _task_result(short, 60)
        handed_back = _task_result(long, 200)
    finally:
        for proc in (short, long):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert finished["status"] == "completed", finished
    assert finished["output"]["echo"]["n"] == "short"
    assert finished["attempt"] == 1, finished
    assert handed_back["status"] == "completed", handed_back
    assert handed_back["output"]["echo"]["n"] == "long"
    assert handed_back["attempt"] == 2, handed_back
    pods = [p["metadata"]["name"] for p in _tier_pods(node_cluster, release)]
    assert victim not in pods, pods


def _pod_metric(pod_ip: str, name: str, labels: dict[str, str]) -> float:
    """One sample of a pod's /metrics, scraped from its pod IP (0 when the series is absent)."""
    with urllib.request.urlopen(f"http://{pod_ip}:9090/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match:
            have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
            if all(have.get(k) == v for k, v in labels.items()):
                return float(match.group(2))
    return 0.0


BACKLOG = 16


def test_backlog_scales_the_tier_up_then_back_to_its_minimum(
    node_cluster: NodeCluster, release: Release
) -> None:
    """The built-in scaler (in the operator pod) sees a backlog on the tier's JetStream consumer,
    scales its Deployment from the minimum (1) to the maximum (3); the new pods take part of the
    work (each pod's /metrics, scraped from its pod IP, counts the tasks it completed); after
    the cooldown the tier is back at one replica."""
    _wait_replicas(node_cluster, release, 1)
    labels = {"worker_type": SLOW_WORKER, "tier": "local"}

    def completed() -> dict[str, float]:
        return {
            p["metadata"]["name"]: _pod_metric(p["status"]["podIP"], "loom_tasks_completed_total", labels)
            for p in _tier_pods(node_cluster, release)
            if _ready(p)
        }

    before = completed()  # the one pod may have done tasks of earlier tests
    submits = [_submit_task(release, {"sleep": 8, "n": i}, wait=None) for i in range(BACKLOG)]
    for proc in submits:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{out}\n{err}"

    def scaled_up() -> tuple[bool, Any]:
        pods = _tier_pods(node_cluster, release)
        ready = [p for p in pods if _ready(p)]
        return len(ready) == 3, [(p["metadata"]["name"], _ready(p)) for p in pods]

    wait_for(scaled_up, timeout=READY_TIMEOUT, what=f"{SLOW_DEPLOYMENT} scaled to 3 Ready pods")

    def consumed() -> tuple[bool, Any]:
        # Asked before the cooldown (20 s after the lag is gone) ends: every pod is still there.
        done = {name: n - before.get(name, 0.0) for name, n in completed().items()}
        return sum(done.values()) >= BACKLOG, done

    done = wait_for(consumed, timeout=READY_TIMEOUT, what=f"{BACKLOG} tasks completed by the tier's pods")
    assert sum(done.values()) == BACKLOG, done
    assert sum(1 for n in done.values() if n > 0) >= 2, done
    state = _consumer(release.monitor_url, SLOW_CONSUMER)
    assert state and state["num_pending"] == 0 and state["num_ack_pending"] == 0, state
    _wait_replicas(node_cluster, release, 1, timeout=READY_TIMEOUT)


# --------------------------------------------------------------------------- NATS lost and back


def _ready_by_component(node: NodeCluster, release: Release, names: tuple[str, ...]) -> dict[str, bool]:
    """Ready of the (non-terminating) pod of each named Deployment."""
    out = {}
    for pod in _pods(node, release.namespace):
        base = pod["metadata"]["name"].rsplit("-", 2)[0]
        if base in names and not pod["metadata"].get("deletionTimestamp"):
            out[base] = _ready(pod)
    return out


def test_readiness_follows_the_nats_connection(node_cluster: NodeCluster, release: Release) -> None:
    """The bundled NATS scaled to zero: the router's, the pipeline's, the scheduler's and a
    worker's pods turn not Ready (their /readyz, probed by the kubelet) without being restarted;
    NATS back (its JetStream store kept on its volume): they turn Ready again and a goal completes."""
    _wait_serving(node_cluster, release)
    watched = ("default-router", "doc-analysis-pipeline", "hourly-status-scheduler", "doc-extractor-local")
    restarts_before = {
        p["metadata"]["name"]: sum(c["restartCount"] for c in p["status"]["containerStatuses"])
        for p in _pods(node_cluster, release.namespace)
    }
    statefulset = f"statefulset/{release.name}-nats"
    node_cluster.kubectl("-n", release.namespace, "scale", statefulset, "--replicas=0")
    try:

        def all_unready() -> tuple[bool, Any]:
            state = _ready_by_component(node_cluster, release, watched)
            return len(state) == len(watched) and not any(state.values()), state

        # Well inside the 60 s the runtime gives a lost connection before liveness fails.
        wait_for(all_unready, timeout=45, what=f"{watched} not Ready without NATS")
    finally:
        node_cluster.kubectl("-n", release.namespace, "scale", statefulset, "--replicas=1")

    def all_ready() -> tuple[bool, Any]:
        state = _ready_by_component(node_cluster, release, watched)
        return len(state) == len(watched) and all(state.values()), state

    wait_for(all_ready, timeout=READY_TIMEOUT, what=f"{watched} Ready again with NATS back")
    for pod in _pods(node_cluster, release.namespace):
        name = pod["metadata"]["name"]
        if name.rsplit("-", 2)[0] in watched:
            restarts = sum(c["restartCount"] for c in pod["status"]["containerStatuses"])
            assert restarts == restarts_before.get(name), (name, restarts_before.get(name), restarts)
    # The bus works again end to end: a task through the router to a worker and back.
    _wait_serving(node_cluster, release)
    result = _task_result(_submit_task(release, {"sleep": 0, "n": "after"}, wait=120), 150)
    assert result["status"] == "completed" and result["output"]["echo"]["n"] == "after", result


# --------------------------------------------------------------------------- upgrade, uninstall


def _deployments(node: NodeCluster, namespace: str) -> dict[str, dict[str, Any]]:
    items = json.loads(node.kubectl("-n", namespace, "get", "deployments", "-o", "json"))["items"]
    return {d["metadata"]["name"]: d for d in items}


def test_helm_upgrade_with_a_new_image_tag_rolls_every_deployment(
    node_cluster: NodeCluster, release: Release
) -> None:
    """`helm upgrade --set image.tag=<new>`: the operator's Deployment rolls (the chart), and the
    operator rolls every Deployment it rendered (router, pipeline, scheduler, workers) to the
    new tag; each ends with only new, Ready pods."""
    _wait_serving(node_cluster, release)
    repo, _ = split_ref(node_cluster.images["LOOM_IMAGE"])
    new_tag = f"upgrade-{uuid.uuid4().hex[:6]}"
    new_ref = f"{repo}:{new_tag}"
    node_cluster.tag_image(node_cluster.images["LOOM_IMAGE"], new_ref)
    before = {
        name: d["status"].get("observedGeneration")
        for name, d in _deployments(node_cluster, release.namespace).items()
    }
    old_pods = {p["metadata"]["name"] for p in _pods(node_cluster, release.namespace)}
    _helm(
        node_cluster,
        "upgrade",
        release.name,
        str(CHART),
        "--namespace",
        release.namespace,
        "--reuse-values",
        "--set",
        f"image.tag={new_tag}",
        "--wait",
        "--timeout",
        f"{int(READY_TIMEOUT)}s",
    )

    def rolled() -> tuple[bool, Any]:
        pending = {}
        for name, d in _deployments(node_cluster, release.namespace).items():
            images = {c["image"] for c in d["spec"]["template"]["spec"]["containers"]}
            status = d["status"]
            want = d["spec"]["replicas"]
            done = (
                images == {new_ref}
                and status.get("observedGeneration", 0) >= d["metadata"]["generation"]
                and status.get("updatedReplicas", 0) == want
                and status.get("readyReplicas", 0) == want
                and status.get("replicas", 0) == want
            )
            if not done:
                pending[name] = (sorted(images), status.get("updatedReplicas"), status.get("readyReplicas"))
        return not pending, pending

    wait_for(rolled, timeout=READY_TIMEOUT, what=f"every Deployment rolled to {new_ref}")
    deployments = _deployments(node_cluster, release.namespace)
    assert set(before) <= set(deployments), (sorted(before), sorted(deployments))
    for name in before:
        assert deployments[name]["metadata"]["generation"] > (before[name] or 0), name
    running = [
        p
        for p in _pods(node_cluster, release.namespace)
        if not p["metadata"].get("deletionTimestamp") and not _job_pod(p)
    ]
    for pod in running:
        if pod["metadata"]["name"].startswith(f"{release.name}-nats-"):
            continue
        assert pod["metadata"]["name"] not in old_pods, pod["metadata"]["name"]
        assert {c["image"] for c in pod["spec"]["containers"]} == {new_ref}, pod["metadata"]["name"]


def test_helm_uninstall_removes_the_release_and_keeps_crds_and_user_resources(
    node_cluster: NodeCluster, release: Release
) -> None:
    """`helm uninstall`: every object of the release's manifest is gone (operator, NATS, RBAC,
    ...); the CRDs (the chart's crds/, never deleted by Helm) and the users' Workers, Pipelines,
    RouterPolicies and Schedules stay."""
    manifest = [
        doc
        for doc in yaml.safe_load_all(
            _helm(node_cluster, "get", "manifest", release.name, "-n", release.namespace)
        )
        if doc
    ]
    assert manifest
    resources_before = {
        kind: sorted(
            i["metadata"]["name"]
            for i in json.loads(node_cluster.kubectl("-n", release.namespace, "get", kind, "-o", "json"))[
                "items"
            ]
        )
        for kind in LOOM_KINDS
    }
    assert all(resources_before.values()), resources_before
    _helm(node_cluster, "uninstall", release.name, "-n", release.namespace, "--wait", "--timeout", "120s")
    assert release.name not in _helm(node_cluster, "list", "-n", release.namespace, "-q").split()
    for doc in manifest:
        namespace = doc["metadata"].get("namespace", release.namespace)
        kind, name = doc["kind"], doc["metadata"]["name"]
        found = subprocess.run(
            [
                helm_bin.kubectl(),
                f"--kubeconfig={node_cluster.kubeconfig}",
                "-n",
                namespace,
                "get",
                kind,
                name,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert found.returncode != 0 and "NotFound" in found.stderr, (kind, name, found.stdout)
    crds = json.loads(node_cluster.kubectl("get", "crds", "-o", "json"))["items"]
    names = {c["metadata"]["name"] for c in crds}
    assert {f"{kind}.loom.dev" for kind in LOOM_KINDS} <= names, names
    resources_after = {
        kind: sorted(
            i["metadata"]["name"]
            for i in json.loads(node_cluster.kubectl("-n", release.namespace, "get", kind, "-o", "json"))[
                "items"
            ]
        )
        for kind in LOOM_KINDS
    }
    assert resources_after == resources_before
