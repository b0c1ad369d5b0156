"""Operator tests against a real API server (tests/k8s harness): CRDs, an operator process, namespaces."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from loom.api.kinds import KINDS
from loom.ports import free_port
from tests.k8s.envtest import ControlPlane
from tests.support.helm_bin import helm
from tests.support.nats_server import NatsServer

ROOT = Path(__file__).resolve().parents[3]
GROUP, VERSION = "loom.dev", "v1alpha1"
PLURALS = {k.kind: k.plural for k in KINDS}


def wait_for(
    check: Callable[[], Any], timeout: float = 60.0, interval: float = 0.25, what: str = "condition"
) -> Any:
    """Poll ``check`` until it returns a truthy value; fail with the last value/error."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except ApiException as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def chart_cluster_role() -> str:
    """The operator ClusterRole from ``helm template`` of the chart: the operator under test has the
    rights a ``helm install`` gives it, no more (helm comes from the test setup's tools step)."""
    out = subprocess.run(
        [helm(), "template", "t", str(ROOT / "helm" / "loom"), "--show-only", "templates/rbac.yaml"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    for doc in yaml.safe_load_all(out):
        if isinstance(doc, dict) and doc.get("kind") == "ClusterRole":
            doc["metadata"] = {"name": "loom-operator-test"}
            return yaml.safe_dump(doc)
    raise AssertionError(f"helm template of the chart rendered no ClusterRole:\n{out[:2000]}")


@pytest.fixture(scope="session")
def loom_crds(control_plane: ControlPlane) -> None:
    """The generated CRDs, applied and Established."""
    with control_plane.api_client() as api:
        ext = client.ApiextensionsV1Api(api)
        for path in sorted((ROOT / "crds").glob("*.yaml")):
            body = yaml.safe_load(path.read_text())
            try:
                ext.create_custom_resource_definition(body)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                body["metadata"]["resourceVersion"] = ext.read_custom_resource_definition(
                    body["metadata"]["name"]
                ).metadata.resource_version
                ext.replace_custom_resource_definition(body["metadata"]["name"], body)

        def established() -> bool:
            for path in (ROOT / "crds").glob("*.yaml"):
                crd = ext.read_custom_resource_definition(
                    yaml.safe_load(path.read_text())["metadata"]["name"]
                )
                conds = {c.type: c.status for c in (crd.status.conditions or [])}
                if conds.get("Established") != "True":
                    return False
            return True

        wait_for(established, 30, what="CRDs established")


@pytest.fixture(scope="session")
def operator_nats() -> Iterator[NatsServer]:
    """One nats-server for the operator's scaler (its monitoring URL is fixed at operator start)."""
    server = NatsServer().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def sa_kubeconfig(control_plane: ControlPlane, loom_crds: None) -> Path:
    """A ServiceAccount kubeconfig bound to the chart's operator ClusterRole."""
    return control_plane.service_account_kubeconfig("loom-system", "loom-operator", chart_cluster_role())


@dataclass
class OperatorProcess:
    """``loom operator`` in a subprocess, with its own kubeconfig and a log file."""

    kubeconfig: Path
    log_path: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    metrics_port: int = 0

    def start(self) -> OperatorProcess:
        self.metrics_port = free_port()
        env = {
            **os.environ,
            **self.env,
            "KUBECONFIG": str(self.kubeconfig),
            "LOOM_METRICS_PORT": str(self.metrics_port),
        }
        log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loom.cli.main", "operator", "--kubeconfig", str(self.kubeconfig)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self.healthy, 60, what=f"operator healthy (log {self.log_path})")
        return self

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited {self.proc.returncode}:\n{self.log()[-4000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def operator_env(nats: NatsServer) -> dict[str, str]:
    return {
        "LOOM_KEDA": "off",
        "LOOM_SCALER_INTERVAL": "0.5",
        "LOOM_RESYNC_SECONDS": "30",
        "LOOM_NATS_MONITOR_URL": nats.monitor_url,
        "LOOM_NATS_URL": nats.url,
        "LOOM_IMAGE": "example.org/loom:test",
        "LOOM_WATCH_NAMESPACES": "",
    }


@contextlib.contextmanager
def running_operator(kubeconfig: Path, env: dict[str, str], name: str = "test") -> Iterator[OperatorProcess]:
    """An operator process with ``env``, stopped at the end; then its log must show no RBAC denial."""
    log_dir = Path(tempfile.mkdtemp(prefix=f"loom-operator-{name}-"))
    op = OperatorProcess(kubeconfig, log_dir / "operator.log", env).start()
    try:
        yield op
    finally:
        op.stop()
    denials = [line for line in op.log().splitlines() if re.search(r'forbidden: User ".*" cannot', line)]
    assert not denials, "RBAC denials in operator log:\n" + "\n".join(denials[:20])


@pytest.fixture(scope="module")
def loom_operator(sa_kubeconfig: Path, operator_nats: NatsServer) -> Iterator[OperatorProcess]:
    """The operator under the ServiceAccount kubeconfig; at the end its log must show no RBAC denial."""
    with running_operator(sa_kubeconfig, operator_env(operator_nats)) as op:
        yield op


@pytest.fixture
def api(admin_api: client.ApiClient) -> client.ApiClient:
    return admin_api


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace for one test."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    yield name
    with contextlib.suppress(ApiException):
        client.CoreV1Api(api).delete_namespace(name)


class Loom:
    """Small helpers over the custom-objects API for tests."""

    def __init__(self, api: client.ApiClient, namespace: str):
        self.co = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.ns = namespace

    def create(self, kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec}
        result: dict[str, Any] = self.co.create_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURALS[kind], body
        )
        return result

    def get(self, kind: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.co.get_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURALS[kind], name
        )
        return result

    def patch(self, kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.co.patch_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURALS[kind], name, {"spec": spec}
        )
        return result

    def delete(self, kind: str, name: str) -> None:
        self.co.delete_namespaced_custom_object(GROUP, VERSION, self.ns, PLURALS[kind], name)

    def condition(self, kind: str, name: str, ctype: str) -> dict[str, Any] | None:
        for c in (self.get(kind, name).get("status") or {}).get("conditions") or []:
            if c["type"] == ctype:
                return dict(c)
        return None

    def wait_ready(self, kind: str, name: str, timeout: float = 90) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            obj = self.get(kind, name)
            status = obj.get("status") or {}
            conds = {c["type"]: c for c in status.get("conditions") or []}
            ok = (
                conds.get("Ready", {}).get("status") == "True"
                and status.get("observedGeneration") == obj["metadata"]["generation"]
            )
            return obj if ok else None

        result: dict[str, Any] = wait_for(ready, timeout, what=f"{kind}/{name} Ready")
        return result

    def deployments(self, selector: str) -> dict[str, Any]:
        return {
            d.metadata.name: d
            for d in self.apps.list_namespaced_deployment(self.ns, label_selector=selector).items
        }


@pytest.fixture
def loom(api: client.ApiClient, namespace: str) -> Loom:
    return Loom(api, namespace)
