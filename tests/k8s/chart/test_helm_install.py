"""`helm install` into a real control plane; the operator, running with the chart's
ServiceAccount and RBAC, reconciles config/samples/ to Ready; `helm uninstall` keeps the
CRDs and the user's resources.

Pods on the test control plane are kwok fakes that run no containers, so the operator
runs as a local process with exactly the environment of the installed Deployment and a
token of the chart's ServiceAccount (the TokenRequest API, as a projected pod token).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from loom.api.kinds import KINDS
from loom_operator.render.common import COMPONENTS
from tests.k8s.envtest import ControlPlane, service_account_kubeconfig, wait_until
from tests.support import chart, helm_bin
from tests.support.nats_server import NatsServer, free_port

pytestmark = [pytest.mark.k8s, pytest.mark.integration]

REPO = chart.REPO
SAMPLES = REPO / "config" / "samples"
RELEASE = "loom"
SYSTEM_NS = "loom-system"
GROUP, VERSION = "loom.dev", "v1alpha1"
PLURALS = {k.kind: k.plural for k in KINDS}
INSTANCE = "app.kubernetes.io/instance"


def sample_manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(SAMPLES.glob("*.yaml")):
        docs += [
            d for d in yaml.safe_load_all(path.read_text()) if d and d.get("apiVersion", "").startswith(GROUP)
        ]
    return docs


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlane) -> ControlPlane:
    """The session control plane of tests.k8s.fixtures."""
    return control_plane


@pytest.fixture(scope="module")
def nats() -> Iterator[NatsServer]:
    server = NatsServer().start()
    try:
        yield server
    finally:
        server.cleanup()


def kubectl(kubeconfig: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [helm_bin.kubectl(), "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check:
        assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
    return proc


def get_json(kubeconfig: Path, *args: str) -> Any:
    return json.loads(kubectl(kubeconfig, "get", *args, "-o", "json").stdout)


def env_value(kubeconfig: Path, entry: dict[str, Any], namespace: str = SYSTEM_NS) -> str:
    """An EnvVar's value as the kubelet would resolve it (plain, or from a Secret key)."""
    if "value" in entry:
        return str(entry["value"])
    ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
    if ref is None:
        return ""
    secret = get_json(kubeconfig, "secret", "-n", namespace, ref["name"])
    return base64.b64decode(secret["data"][ref["key"]]).decode()


def server_users(kubeconfig: Path) -> dict[str, str]:
    """User → password of the NATS server's user list the operator wrote (empty before it has)."""
    proc = kubectl(
        kubeconfig, "get", "secret", "-n", SYSTEM_NS, f"{RELEASE}-nats-auth", "-o", "json", check=False
    )
    if proc.returncode != 0:
        return {}
    text = base64.b64decode(json.loads(proc.stdout)["data"]["auth.conf"]).decode()
    return {u["user"]: u["password"] for u in json.loads(text.removeprefix("authorization: "))["users"]}


def start_operator(
    loom: Path, args: list[str], env: dict[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [str(loom), *args],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_operator(operator: subprocess.Popen[bytes]) -> None:
    if operator.poll() is not None:
        return
    operator.terminate()
    try:
        operator.wait(30)
    except subprocess.TimeoutExpired:
        operator.kill()
        operator.wait(10)


def ready(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"]["generation"]:
        return False
    return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))


@pytest.mark.parametrize(
    ("mode", "user_ns"),
    [("cluster-wide", "loom-samples"), ("namespaced", "loom-team")],
    ids=["cluster-wide", "namespaced"],
)
def test_helm_install_operator_reconciles_samples_and_uninstall_keeps_crds(
    plane: ControlPlane, nats: NatsServer, tmp_path: Path, mode: str, user_ns: str
) -> None:
    assert chart.crd_files(), "helm/loom/crds/ is empty: python -m loom_operator.crdgen writes it"
    samples = sample_manifests()
    assert samples, "config/samples/ holds no loom.dev resources"
    loom = Path(sys.executable).parent / "loom"
    admin = Path(plane.admin_kubeconfig)

    # 1. helm install with the chart's defaults, pointed at a real NATS; namespaced mode
    #    serves only the user namespace (which must exist first) through a Role there.
    values: dict[str, Any] = {"nats": {"url": nats.url, "monitorUrl": nats.monitor_url}}
    kubectl(admin, "create", "namespace", user_ns)
    if mode == "namespaced":
        values["watchNamespaces"] = [user_ns]
    proc = chart.run_helm(
        [
            "install",
            RELEASE,
            str(chart.CHART),
            "--namespace",
            SYSTEM_NS,
            "--create-namespace",
            "--kubeconfig",
            str(admin),
            "-f",
            str(chart.values_file(values, tmp_path)),
        ],
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    crd_names = sorted(f"{plural}.{GROUP}" for plural in PLURALS.values())
    kubectl(admin, "wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in crd_names])
    deployment = get_json(admin, "deployment", "-n", SYSTEM_NS, f"{RELEASE}-operator")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]

    # 2. The operator as a local process: the Deployment's env, the ServiceAccount's token.
    sa_kubeconfig = service_account_kubeconfig(
        admin, tmp_path / "operator.kubeconfig", SYSTEM_NS, pod["serviceAccountName"], None
    )
    env = {e["name"]: env_value(admin, e) for e in container["env"]}
    env["LOOM_METRICS_PORT"] = str(free_port())
    env["KUBECONFIG"] = str(sa_kubeconfig)
    log_path = tmp_path / "operator.log"
    operator = start_operator(loom, container["args"], env, log_path)
    try:

        def alive() -> None:
            if operator.poll() is not None:
                raise AssertionError(
                    f"operator exited {operator.returncode}:\n{log_path.read_text()[-6000:]}"
                )

        # 3. kubectl apply -f config/samples/ into the user namespace.
        kubectl(admin, "apply", "-n", user_ns, "-f", str(SAMPLES))

        # kwok runs no container, so an EvalSuite's Job ends here without a verdict: its Job is
        # checked instead (the node test waits for the suite Ready after its Job ran on real pods).
        def all_ready() -> bool:
            for kind, plural in PLURALS.items():
                if kind == "EvalSuite":
                    continue
                expected = {d["metadata"]["name"] for d in samples if d["kind"] == kind}
                items = get_json(admin, plural, "-n", user_ns)["items"]
                if {i["metadata"]["name"] for i in items if ready(i)} != expected:
                    return False
            return True

        try:
            wait_until(all_ready, timeout=180, interval=1.0, what="config/samples/ Ready", check=alive)
        except TimeoutError as exc:
            states = {
                plural: [
                    (i["metadata"]["name"], i.get("status"))
                    for i in get_json(admin, plural, "-n", user_ns)["items"]
                ]
                for plural in PLURALS.values()
            }
            raise AssertionError(
                f"{exc}\n{json.dumps(states, indent=1)[:6000]}\n{log_path.read_text()[-6000:]}"
            ) from exc

        # Each suite's Job is made once its Worker and the router are Ready (just seen above).
        suites = {d["metadata"]["name"] for d in samples if d["kind"] == "EvalSuite"}

        def suite_jobs() -> bool:
            jobs = get_json(admin, "jobs", "-n", user_ns, "-l", "loom.dev/evalsuite")["items"]
            return {j["metadata"]["labels"]["loom.dev/evalsuite"] for j in jobs} == suites

        assert suites
        wait_until(suite_jobs, timeout=60, interval=1.0, what="a Job for every EvalSuite", check=alive)

        # The operator never writes spec (Argo CD sees no drift) and its RBAC sufficed.
        for plural in PLURALS.values():
            for item in get_json(admin, plural, "-n", user_ns)["items"]:
                assert item["metadata"]["generation"] == 1, item["metadata"]["name"]
        forbidden = [line for line in log_path.read_text().splitlines() if "forbidden" in line.lower()]
        # Kopf lists namespaces even in namespaced mode unless settings.scanning.disabled is set;
        # it then falls back to the given namespaces. Anything else forbidden is an RBAC gap.
        namespace_scan = [line for line in forbidden if 'resource "namespaces"' in line]
        assert len(forbidden) == len(namespace_scan), "\n".join(forbidden)
        assert mode == "namespaced" or not namespace_scan, "\n".join(namespace_scan)
        # Children: owned, labelled for Loom, never with the instance label Argo CD tracks.
        children = [
            o
            for kind in ("deployments", "configmaps", "services")
            for o in get_json(admin, kind, "-n", user_ns, "-l", "app.kubernetes.io/managed-by=loom-operator")[
                "items"
            ]
        ]
        assert children
        for child in children:
            assert INSTANCE not in child["metadata"].get("labels", {}), child["metadata"]["name"]
            assert child["metadata"]["ownerReferences"][0]["apiVersion"] == f"{GROUP}/{VERSION}"

        # 5. Bus identity (nats.auth.mode generated by default): every Deployment connects as its
        #    resource, with the password the operator put in the NATS server's user list.
        expected_users = {"admin"} | {
            f"{COMPONENTS[d['kind']]}_{user_ns}_{d['metadata']['name']}" for d in samples
        }
        wait_until(
            lambda: set(server_users(admin)) == expected_users,
            timeout=60,
            interval=0.5,
            what="the NATS user list",
            check=alive,
        )
        users = server_users(admin)
        deployments = get_json(
            admin, "deployments", "-n", user_ns, "-l", "app.kubernetes.io/managed-by=loom-operator"
        )
        assert deployments["items"]
        for dep in deployments["items"]:
            (c,) = dep["spec"]["template"]["spec"]["containers"]
            dep_env = {e["name"]: e for e in c["env"]}
            user = env_value(admin, dep_env["LOOM_NATS_USER"], user_ns)
            assert env_value(admin, dep_env["LOOM_NATS_PASSWORD"], user_ns) == users[user], dep["metadata"][
                "name"
            ]
            assert dep_env["LOOM_NATS_INBOX_PREFIX"]["value"] == f"_INBOX_{user}"
        key_before = get_json(admin, "secret", "-n", SYSTEM_NS, f"{RELEASE}-nats-auth-key")["data"]

        # 6. helm upgrade keeps the key (lookup); an operator restarted with the upgraded
        #    Deployment's environment writes the same users and passwords.
        proc = chart.run_helm(
            [
                "upgrade",
                RELEASE,
                str(chart.CHART),
                "--namespace",
                SYSTEM_NS,
                "--kubeconfig",
                str(admin),
                "-f",
                str(chart.values_file(values, tmp_path)),
            ],
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        assert get_json(admin, "secret", "-n", SYSTEM_NS, f"{RELEASE}-nats-auth-key")["data"] == key_before
        stop_operator(operator)
        deployment = get_json(admin, "deployment", "-n", SYSTEM_NS, f"{RELEASE}-operator")
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = {
            **env,
            **{e["name"]: env_value(admin, e) for e in container["env"]},
            "LOOM_METRICS_PORT": str(free_port()),
        }
        log_path = tmp_path / "operator-upgraded.log"
        operator = start_operator(loom, container["args"], env, log_path)
        wait_until(
            lambda: "NATS users of" in log_path.read_text(),
            timeout=60,
            interval=0.5,
            what="the restarted operator's user list",
            check=alive,
        )
        assert server_users(admin) == users
    finally:
        stop_operator(operator)

    # 4. helm uninstall: release objects go, CRDs and the user's resources stay.
    proc = chart.run_helm(
        ["uninstall", RELEASE, "--namespace", SYSTEM_NS, "--kubeconfig", str(admin), "--wait"]
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        kubectl(admin, "get", "deployment", "-n", SYSTEM_NS, f"{RELEASE}-operator", check=False).returncode
        != 0
    )
    assert kubectl(admin, "get", "clusterrole", f"{RELEASE}-operator", check=False).returncode != 0
    for name in crd_names:
        kubectl(admin, "get", "crd", name)
    for plural in PLURALS.values():
        names = {i["metadata"]["name"] for i in get_json(admin, plural, "-n", user_ns)["items"]}
        kind = next(k for k, p in PLURALS.items() if p == plural)
        assert names == {d["metadata"]["name"] for d in samples if d["kind"] == kind}
    assert not namespace_scan, f"the namespaced operator listed cluster namespaces: {namespace_scan[0][:300]}"
