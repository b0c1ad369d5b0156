"""The chart's admission policy on a real API server: the operator's identity may write only the
ConfigMaps, Secrets, Services and Deployments it manages, even where RBAC (cluster-wide) allows more."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.k8s.envtest import ControlPlane
from tests.k8s.operator.conftest import wait_for
from tests.support import chart

pytestmark = pytest.mark.k8s

RELEASE, NAMESPACE = "wp", "loom-system"
MANAGED = {"app.kubernetes.io/managed-by": "loom-operator"}
RULES = [
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "create", "patch", "delete"]},
]


@pytest.fixture
def policy(control_plane: ControlPlane) -> Iterator[list[dict[str, Any]]]:
    """The chart's ValidatingAdmissionPolicy and binding for release ``wp``, applied; removed afterwards."""
    proc = chart.run_helm(
        ["template", RELEASE, str(chart.CHART), "-n", NAMESPACE, "--show-only", "templates/writepolicy.yaml"]
    )
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert [d["kind"] for d in docs] == ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    with control_plane.api_client() as api:
        adm = client.AdmissionregistrationV1Api(api)
        adm.create_validating_admission_policy(docs[0])
        adm.create_validating_admission_policy_binding(docs[1])
        try:
            yield docs
        finally:
            with contextlib.suppress(ApiException):
                adm.delete_validating_admission_policy_binding(docs[1]["metadata"]["name"])
            with contextlib.suppress(ApiException):
                adm.delete_validating_admission_policy(docs[0]["metadata"]["name"])


def test_the_operator_writes_only_what_it_manages(
    control_plane: ControlPlane, policy: list[dict[str, Any]]
) -> None:
    sa = control_plane.service_account_kubeconfig(NAMESPACE, f"{RELEASE}-loom", RULES)
    name = f"not-loom-{uuid.uuid4().hex[:6]}"
    with control_plane.api_client() as admin_api, config.new_client_from_config(str(sa)) as sa_api:
        admin, operator = client.CoreV1Api(admin_api), client.CoreV1Api(sa_api)
        admin.create_namespaced_config_map("kube-system", {"metadata": {"name": name}, "data": {"k": "v"}})
        try:

            def denied() -> str | None:
                try:
                    operator.patch_namespaced_config_map(name, "kube-system", {"data": {"k": "changed"}})
                except ApiException as exc:
                    return (
                        exc.body
                        if exc.status == 403 and "writes only objects it manages" in exc.body
                        else None
                    )
                # Admitted before the policy took effect: put the value back and try again.
                admin.patch_namespaced_config_map(name, "kube-system", {"data": {"k": "v"}})
                return None

            assert wait_for(denied, 30, what="the policy denies a foreign ConfigMap")
            with pytest.raises(ApiException) as info:
                operator.delete_namespaced_config_map(name, "kube-system")
            assert info.value.status == 403
            with pytest.raises(ApiException) as info:
                operator.create_namespaced_config_map("kube-system", {"metadata": {"name": f"{name}-new"}})
            assert info.value.status == 403
            # Taking a foreign object over by labelling it is refused too.
            with pytest.raises(ApiException) as info:
                operator.patch_namespaced_config_map(name, "kube-system", {"metadata": {"labels": MANAGED}})
            assert info.value.status == 403
            assert admin.read_namespaced_config_map(name, "kube-system").data == {"k": "v"}

            own = f"{name}-config"
            operator.create_namespaced_config_map(
                "kube-system", {"metadata": {"name": own, "labels": MANAGED}, "data": {"k": "v"}}
            )
            operator.patch_namespaced_config_map(own, "kube-system", {"data": {"k": "w"}})
            operator.delete_namespaced_config_map(own, "kube-system")
        finally:
            admin.delete_namespaced_config_map(name, "kube-system")


def test_the_operator_cannot_overwrite_a_foreign_secret(
    control_plane: ControlPlane, policy: list[dict[str, Any]]
) -> None:
    """Generated NATS identities give the operator Secrets create/patch: only on its own Secrets."""
    rules = [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "patch"]}]
    sa = control_plane.service_account_kubeconfig(NAMESPACE, f"{RELEASE}-loom", rules)
    name = f"api-key-{uuid.uuid4().hex[:6]}"
    with control_plane.api_client() as admin_api, config.new_client_from_config(str(sa)) as sa_api:
        admin, operator = client.CoreV1Api(admin_api), client.CoreV1Api(sa_api)
        admin.create_namespaced_secret("kube-system", {"metadata": {"name": name}, "stringData": {"k": "v"}})
        try:

            def denied() -> str | None:
                try:
                    operator.patch_namespaced_secret(name, "kube-system", {"stringData": {"k": "mine"}})
                except ApiException as exc:
                    return (
                        exc.body
                        if exc.status == 403 and "writes only objects it manages" in exc.body
                        else None
                    )
                admin.patch_namespaced_secret(name, "kube-system", {"stringData": {"k": "v"}})
                return None

            assert wait_for(denied, 30, what="the policy denies a foreign Secret")
            own = f"{name}-worker-nats"
            operator.create_namespaced_secret(
                "kube-system", {"metadata": {"name": own, "labels": MANAGED}, "stringData": {"user": "u"}}
            )
            operator.patch_namespaced_secret(own, "kube-system", {"stringData": {"user": "w"}})
            admin.delete_namespaced_secret(own, "kube-system")
        finally:
            admin.delete_namespaced_secret(name, "kube-system")


def test_the_policy_can_be_turned_off(tmp_path: Path) -> None:
    objects = chart.render({"rbac": {"restrictWrites": False}}, tmp_path)
    kinds = {o["kind"] for o in objects}
    assert "Deployment" in kinds
    assert not kinds & {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
