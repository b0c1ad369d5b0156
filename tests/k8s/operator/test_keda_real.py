"""A real KEDA scales a Worker tier from the ScaledObject the operator renders.

KEDA's operator and metrics API server are built by ``hack/keda/build.sh`` (test setup) and run as
processes beside the test control plane: the operator reads the tier's JetStream consumer lag from
the real nats-server's monitoring endpoint and activates the Deployment from zero; its metrics server
is registered with the API server's aggregation layer (an APIService whose endpoint is this host),
and kube-controller-manager's HorizontalPodAutoscaler, which KEDA creates, scales the tier further
on that metric. Pods are kwok's (nothing consumes the backlog), so the lag, and with it the wanted
replica count, stays where the test puts it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from nats.js.errors import NotFoundError

from loom import subjects
from loom.ports import free_port
from tests.k8s.envtest import ControlPlane
from tests.k8s.operator.conftest import ROOT, Loom, OperatorProcess, operator_env, running_operator, wait_for
from tests.k8s.operator.test_operator_keda import backlog, drop_consumer, scaled_objects
from tests.support.nats_server import NatsServer

pytestmark = [pytest.mark.k8s, pytest.mark.keda]

BUILD_SCRIPT = ROOT / "hack" / "keda" / "build.sh"
KEDA_NAMESPACE = "keda"
METRICS_SERVICE = "keda-metrics-apiserver"
API_SERVICE = "v1beta1.external.metrics.k8s.io"


async def drop_consumer_if_any(server: NatsServer, worker_type: str, tier: str) -> None:
    with contextlib.suppress(NotFoundError):
        await drop_consumer(server, worker_type, tier)


async def purge_tasks(server: NatsServer, worker_type: str, tier: str) -> None:
    """Remove the tier's waiting tasks from the work-queue stream (its consumer's lag becomes 0)."""
    nc = await nats.connect(server.url)
    try:
        subject = subjects.task_subject(worker_type, tier)
        await nc.jetstream().purge_stream(subjects.STREAM_TASKS, subject=subject)
    finally:
        await nc.close()


def scaled_object_name(worker: str, tier: str) -> str:
    return f"{worker}-{tier}"


def keda_saw(loom: Loom, name: str) -> bool:
    """KEDA has reconciled the ScaledObject (it writes its own conditions and the HPA's name)."""
    obj = loom.co.get_namespaced_custom_object("keda.sh", "v1alpha1", loom.ns, "scaledobjects", name)
    return bool((obj.get("status") or {}).get("conditions"))


def keda_dir() -> Path:
    """The built KEDA (asked with ``--check``: nothing is built inside a test)."""
    result = subprocess.run(["bash", str(BUILD_SCRIPT), "--check"], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(
            f"KEDA is not built: run `make test-keda` (or `bash hack/test-setup.sh keda`) first.\n"
            f"{result.stderr.strip()}"
        )
    return Path(result.stdout.strip().splitlines()[-1])


def host_address() -> str:
    """This host's first non-loopback IPv4 address: the API server's aggregation layer refuses to
    proxy to a loopback endpoint, so KEDA's metrics server listens here."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):
        sock.connect(("192.0.2.254", 9))  # no packet is sent: this only picks the route
        address = str(sock.getsockname()[0])
        if not address.startswith("127."):
            return address
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    for address in out:
        if "." in address and not address.startswith("127."):
            return address
    pytest.fail("no non-loopback IPv4 address on this host for KEDA's metrics server")


@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, size: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-size:]

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _start(name: str, argv: list[str], env: dict[str, str], workdir: Path) -> Process:
    log = workdir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Process(name, proc, log)


@dataclass
class Keda:
    operator: Process
    adapter: Process

    def alive(self) -> None:
        self.operator.alive()
        self.adapter.alive()


def _apply_crds(api: client.ApiClient, crd_dir: Path) -> list[str]:
    """KEDA's CRDs (its operator watches every one of them), replacing a stand-in of the same name;
    returns their names."""
    ext = client.ApiextensionsV1Api(api)
    names = []
    for path in sorted(crd_dir.glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        name = body["metadata"]["name"]
        with contextlib.suppress(ApiException):
            ext.delete_custom_resource_definition(name)
        wait_for(lambda n=name: not _crd_exists(ext, n), 60, what=f"old {name} gone")
        ext.create_custom_resource_definition(body)
        names.append(name)
    for name in names:
        wait_for(
            lambda n=name: any(
                c.type == "Established" and c.status == "True"
                for c in ext.read_custom_resource_definition(n).status.conditions or []
            ),
            30,
            what=f"{name} established",
        )
    return names


def _crd_exists(ext: client.ApiextensionsV1Api, name: str) -> bool:
    try:
        ext.read_custom_resource_definition(name)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def _register_metrics_server(api: client.ApiClient, address: str, port: int, ca_pem: bytes) -> None:
    """The APIService for external metrics, backed by a selector-less Service whose endpoint is
    KEDA's metrics server on this host (the API server routes to endpoints directly)."""
    core = client.CoreV1Api(api)
    with contextlib.suppress(ApiException):
        core.create_namespace({"metadata": {"name": KEDA_NAMESPACE}})
    core.create_namespaced_service(
        KEDA_NAMESPACE,
        {
            "metadata": {"name": METRICS_SERVICE},
            "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]},
        },
    )
    core.create_namespaced_endpoints(
        KEDA_NAMESPACE,
        {
            "metadata": {"name": METRICS_SERVICE},
            "subsets": [{"addresses": [{"ip": address}], "ports": [{"name": "https", "port": port}]}],
        },
    )
    client.DiscoveryV1Api(api).create_namespaced_endpoint_slice(
        KEDA_NAMESPACE,
        {
            "metadata": {
                "name": f"{METRICS_SERVICE}-host",
                "labels": {"kubernetes.io/service-name": METRICS_SERVICE},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        },
    )
    client.ApiregistrationV1Api(api).create_api_service(
        {
            "metadata": {"name": API_SERVICE},
            "spec": {
                "service": {"name": METRICS_SERVICE, "namespace": KEDA_NAMESPACE, "port": 443},
                "group": "external.metrics.k8s.io",
                "version": "v1beta1",
                "caBundle": base64.b64encode(ca_pem).decode(),
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        }
    )


def _unregister_metrics_server(api: client.ApiClient) -> None:
    with contextlib.suppress(ApiException):
        client.ApiregistrationV1Api(api).delete_api_service(API_SERVICE)
    with contextlib.suppress(ApiException):
        client.CoreV1Api(api).delete_namespace(KEDA_NAMESPACE)


def _release_finalizers(api: client.ApiClient) -> None:
    """KEDA puts a finalizer on each ScaledObject; with KEDA stopped, one left behind would keep
    its CRD from ever being deleted."""
    co = client.CustomObjectsApi(api)
    for obj in co.list_cluster_custom_object("keda.sh", "v1alpha1", "scaledobjects")["items"]:
        meta = obj["metadata"]
        if meta.get("finalizers"):
            with contextlib.suppress(ApiException):
                co.patch_namespaced_custom_object(
                    "keda.sh", "v1alpha1", meta["namespace"], "scaledobjects", meta["name"],
                    {"metadata": {"finalizers": None}},
                )


def _api_service_available(api: client.ApiClient) -> bool:
    svc = client.ApiregistrationV1Api(api).read_api_service(API_SERVICE)
    return any(c.type == "Available" and c.status == "True" for c in (svc.status.conditions or []))


@pytest.fixture(scope="module")
def keda(control_plane: ControlPlane, loom_crds: None) -> Iterator[Keda]:
    """KEDA's operator and metrics server on this host, against the test control plane."""
    built = keda_dir()
    workdir = Path(tempfile.mkdtemp(prefix="loom-keda-"))
    address = host_address()
    certs = workdir / "certs"
    certs.mkdir()
    # One certificate serves the metrics server (for the aggregation layer) and both ends of the
    # operator <-> metrics server gRPC link (mutual TLS from one directory, as KEDA's own deploy does).
    pair = control_plane.issue_certificate(
        "keda",
        "keda",
        [
            "localhost",
            "127.0.0.1",
            address,
            f"{METRICS_SERVICE}.{KEDA_NAMESPACE}.svc",
            f"keda-operator.{KEDA_NAMESPACE}.svc.cluster.local",
        ],
    )
    shutil.copy(control_plane.ca_cert, certs / "ca.crt")
    shutil.copy(pair.cert, certs / "tls.crt")
    shutil.copy(pair.key, certs / "tls.key")
    grpc_port, adapter_port = free_port(), free_port(address)
    kubeconfig = str(control_plane.admin_kubeconfig)
    env = {
        "KUBECONFIG": kubeconfig,
        "WATCH_NAMESPACE": "",
        "POD_NAMESPACE": KEDA_NAMESPACE,
        "KEDA_CLUSTER_OBJECT_NAMESPACE": KEDA_NAMESPACE,
    }
    with control_plane.api_client() as api:
        crds = _apply_crds(api, built / "crds")
        _register_metrics_server(api, address, adapter_port, control_plane.ca_cert.read_bytes())
        operator = _start(
            "keda-operator",
            [
                str(built / "keda-operator"),
                f"--kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--metrics-bind-address=0",
                f"--health-probe-bind-address=127.0.0.1:{free_port()}",
                f"--metrics-service-bind-address=127.0.0.1:{grpc_port}",
                f"--cert-dir={certs}",
                f"--ca-dir={certs}",
                "--enable-cert-rotation=false",
                "--enable-webhook-patching=false",
                "--enable-apiservice-patching=false",
                "--zap-log-level=info",
            ],
            env,
            workdir,
        )
        adapter = _start(
            "keda-adapter",
            [
                str(built / "keda-adapter"),
                f"--secure-port={adapter_port}",
                f"--bind-address={address}",
                f"--port={free_port()}",
                f"--cert-dir={certs}",
                f"--tls-cert-file={certs / 'tls.crt'}",
                f"--tls-private-key-file={certs / 'tls.key'}",
                f"--lister-kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                f"--metrics-service-address=127.0.0.1:{grpc_port}",
                "--metrics-service-grpc-authority=localhost",
                "--zap-log-level=info",
            ],
            env,
            workdir,
        )
        started = Keda(operator, adapter)
        try:

            def available() -> bool:
                started.alive()
                return _api_service_available(api)

            wait_for(available, 120, what=f"KEDA's external metrics API available (logs in {workdir})")
            yield started
            # Logs and certificates go at teardown (a KEDA process that died reports its log's tail);
            # a start that failed keeps them for reading.
            shutil.rmtree(workdir, ignore_errors=True)
        finally:
            adapter.stop()
            operator.stop()
            _unregister_metrics_server(api)
            _release_finalizers(api)
            ext = client.ApiextensionsV1Api(api)
            for name in crds:
                with contextlib.suppress(ApiException):
                    ext.delete_custom_resource_definition(name)
            # Gone, not terminating: the next module's stand-in CRD must be created afresh.
            for name in crds:
                wait_for(lambda n=name: not _crd_exists(ext, n), 60, what=f"{name} deleted")


@pytest.fixture(scope="module")
def keda_namespace(control_plane: ControlPlane, keda: Keda) -> Iterator[str]:
    """The test's namespace, deleted (and gone) while KEDA still runs to release its finalizers."""
    name = f"keda-real-{uuid.uuid4().hex[:6]}"
    with control_plane.api_client() as api:
        core = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": name}})
        yield name
        with contextlib.suppress(ApiException):
            core.delete_namespace(name)

        def gone() -> bool:
            try:
                core.read_namespace(name)
            except ApiException as exc:
                return exc.status == 404
            return False

        try:
            wait_for(gone, 60, what=f"namespace {name} deleted")
        except AssertionError:
            # KEDA died before releasing its ScaledObjects' finalizers: release them, then report.
            _release_finalizers(api)
            wait_for(gone, 60, what=f"namespace {name} deleted after releasing KEDA's finalizers")
            raise


@pytest.fixture(scope="module")
def loom_keda(
    keda: Keda, sa_kubeconfig: Path, operator_nats: NatsServer, keda_namespace: str
) -> Iterator[OperatorProcess]:
    """The operator in KEDA mode (``auto``: it finds KEDA's real CRD), watching one namespace."""
    env = {**operator_env(operator_nats), "LOOM_KEDA": "auto", "LOOM_WATCH_NAMESPACES": keda_namespace}
    with running_operator(sa_kubeconfig, env, name="keda-real") as op:
        wait_for(lambda: "KEDA on" in op.log(), 30, what="operator started in KEDA mode")
        yield op


def test_real_keda_activates_a_tier_from_zero_and_scales_it_on_consumer_lag(
    keda: Keda,
    loom_keda: OperatorProcess,
    control_plane: ControlPlane,
    keda_namespace: str,
    operator_nats: NatsServer,
    request: pytest.FixtureRequest,
) -> None:
    with control_plane.api_client() as api:
        loom = Loom(api, keda_namespace)
        autoscaling = {
            "minReplicas": 0,
            "maxReplicas": 4,
            "targetLag": 5,
            "activationLag": 1,
            "cooldownSeconds": 5,
            "pollingSeconds": 1,
        }
        spec = {"systemPrompt": "Classify.", "tiers": ["local"], "defaultModelTier": "local"}
        loom.create("Worker", "burst", {**spec, "autoscaling": autoscaling})
        wait_for(lambda: scaled_objects(loom, "burst"), 30, what="ScaledObject rendered")

        def replicas() -> int:
            keda.alive()
            return int(loom.apps.read_namespaced_deployment("burst-local", keda_namespace).spec.replicas or 0)

        # No consumer yet (no worker ever started): KEDA's scaler reports an error and the tier
        # keeps the replicas it has; it is not scaled up towards its maximum on missing data.
        scaled_object = scaled_object_name("burst", "local")
        wait_for(lambda: keda_saw(loom, scaled_object), 60, what="KEDA reconciled the ScaledObject")
        for _ in range(10):  # ten of its 1 s polling intervals
            assert replicas() <= 1
            time.sleep(1)

        # The tier's consumer exists with nothing waiting (as a started worker leaves it): lag 0,
        # and KEDA takes the tier to its minimum, zero.
        asyncio.run(backlog(operator_nats, "burst", "local", 0))
        request.addfinalizer(lambda: asyncio.run(drop_consumer_if_any(operator_nats, "burst", "local")))
        wait_for(lambda: replicas() == 0, 60, what="KEDA scaled burst-local to 0")

        # 12 waiting tasks: KEDA activates the tier (lag 12 > activationLag 1), and the HPA it
        # made asks for ceil(12 / targetLag 5) = 3 replicas through KEDA's external metric.
        asyncio.run(backlog(operator_nats, "burst", "local", 12))
        wait_for(lambda: replicas() >= 1, 60, what="KEDA activated burst-local from 0")
        wait_for(lambda: replicas() == 3, 90, what="the HPA scaled burst-local to 3 on the lag")
        hpa = client.AutoscalingV2Api(api).read_namespaced_horizontal_pod_autoscaler(
            "keda-hpa-burst-local", keda_namespace
        )
        (metric,) = hpa.spec.metrics
        assert metric.type == "External"
        assert hpa.spec.max_replicas == 4
        current = hpa.status.current_metrics or []
        assert current and current[0].external.current.average_value is not None

        # The backlog goes (the tasks purged; the consumer stays, as a worker would leave it: KEDA
        # reads a missing consumer as an error and then keeps the replicas it has): lag 0, and
        # after the cooldown KEDA itself takes the tier back to 0.
        asyncio.run(purge_tasks(operator_nats, "burst", "local"))
        wait_for(lambda: replicas() == 0, 90, what="KEDA scaled burst-local back to 0")
        # The Worker stays Ready throughout; the operator never wrote replicas.
        loom.wait_ready("Worker", "burst")
