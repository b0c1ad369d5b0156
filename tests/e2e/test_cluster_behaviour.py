"""Cluster behaviour Loom relies on, checked against a real API server.

These guard the test harness as much as the platform: if envtest (or kind) stopped
enforcing CEL rules, scheduling Pods, collecting garbage or denying RBAC, the operator
tests built on top of it would pass for the wrong reason.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.k8s.envtest import service_account_kubeconfig

pytestmark = pytest.mark.k8s

T = TypeVar("T")

CEL_MESSAGE = "minReplicas must not exceed maxReplicas"
# Pulled for real on kind; kwok never pulls, it only reports the Pod Running.
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"


def eventually(probe: Callable[[], T], *, timeout: float, what: str, interval: float = 0.2) -> T:
    """Return the first truthy ``probe()`` result; fail with the last one after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last value: {last!r}")
        time.sleep(interval)


def _meta(obj: Any) -> client.V1ObjectMeta:
    """An API object's metadata; the server always sets it, the client types say Optional."""
    meta = obj.metadata
    assert isinstance(meta, client.V1ObjectMeta)
    return meta


def _status_of(call: Callable[[], Any]) -> int:
    """HTTP status of an API call: 200 when it succeeds, the error status otherwise."""
    try:
        call()
    except ApiException as exc:
        return int(exc.status)
    return 200


# --------------------------------------------------------------------------- CRD + CEL


@pytest.fixture
def widget_crd(api: client.ApiClient) -> Iterator[tuple[str, str]]:
    """A namespaced test CRD with a CEL rule; yields (group, plural). Unique group per run."""
    group = f"e{uuid.uuid4().hex[:6]}.test.loom.dev"
    name = f"widgets.{group}"
    # A manifest, as users write CRDs; the client sends dict bodies as-is (its stubs want models).
    crd: Any = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["minReplicas", "maxReplicas"],
                                    "properties": {
                                        "minReplicas": {"type": "integer", "minimum": 0},
                                        "maxReplicas": {"type": "integer", "minimum": 0},
                                    },
                                    "x-kubernetes-validations": [
                                        {
                                            "rule": "self.minReplicas <= self.maxReplicas",
                                            "message": CEL_MESSAGE,
                                        }
                                    ],
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    ext = client.ApiextensionsV1Api(api)
    ext.create_custom_resource_definition(crd)
    try:

        def established() -> bool:
            status = ext.read_custom_resource_definition(name).status
            conditions = (status.conditions if status else None) or []
            return any(c.type == "Established" and c.status == "True" for c in conditions)

        eventually(established, timeout=30, what=f"CRD {name} Established")
        yield group, "widgets"
    finally:
        ext.delete_custom_resource_definition(name)


def _widget(name: str, min_replicas: int, max_replicas: int, group: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{group}/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"minReplicas": min_replicas, "maxReplicas": max_replicas},
    }


def test_cel_rule_rejects_invalid_custom_object(
    api: client.ApiClient, namespace: str, widget_crd: tuple[str, str]
) -> None:
    group, plural = widget_crd
    custom = client.CustomObjectsApi(api)

    # Serving a fresh CRD can lag "Established" by a moment (404 until its handler exists).
    def create_valid() -> Any:
        try:
            return custom.create_namespaced_custom_object(
                group, "v1", namespace, plural, _widget("ok", 1, 3, group)
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    created = eventually(create_valid, timeout=30, what="the widget endpoint to serve")
    assert created["spec"] == {"minReplicas": 1, "maxReplicas": 3}

    with pytest.raises(ApiException) as rejected:
        custom.create_namespaced_custom_object(group, "v1", namespace, plural, _widget("bad", 5, 2, group))
    assert rejected.value.status == 422
    assert CEL_MESSAGE in str(rejected.value.body)

    # The rule also guards updates, not only creates.
    with pytest.raises(ApiException) as rejected_update:
        custom.patch_namespaced_custom_object(
            group, "v1", namespace, plural, "ok", {"spec": {"minReplicas": 9}}
        )
    assert rejected_update.value.status == 422
    assert CEL_MESSAGE in str(rejected_update.value.body)
    stored: Any = custom.get_namespaced_custom_object(group, "v1", namespace, plural, "ok")
    assert stored["spec"]["minReplicas"] == 1

    with pytest.raises(ApiException):
        custom.get_namespaced_custom_object(group, "v1", namespace, plural, "bad")


# --------------------------------------------------------------------------- Deployments


def test_deployment_pods_become_running(api: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    labels = {"app": "e2e-pause"}
    apps.create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="pause"),
            spec=client.V1DeploymentSpec(
                replicas=2,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(containers=[client.V1Container(name="pause", image=PAUSE_IMAGE)]),
                ),
            ),
        ),
    )

    def is_running(pod: client.V1Pod) -> bool:
        status, spec = pod.status, pod.spec
        return bool(status and spec and status.phase == "Running" and status.pod_ip and spec.node_name)

    def running_pods() -> list[client.V1Pod]:
        pods = core.list_namespaced_pod(namespace, label_selector="app=e2e-pause").items
        running = [p for p in pods if is_running(p)]
        return running if len(running) == 2 else []

    pods = eventually(running_pods, timeout=180, interval=0.5, what="2 Running pods of the Deployment")
    # Deployment -> ReplicaSet -> Pod: the controller-manager made them, not the test.
    for pod in pods:
        owners = [o for o in _meta(pod).owner_references or [] if o.controller]
        assert [o.kind for o in owners] == ["ReplicaSet"]
        replica_set = apps.read_namespaced_replica_set(owners[0].name, namespace)
        assert [o.name for o in _meta(replica_set).owner_references or []] == ["pause"]

    def available() -> bool:
        status = apps.read_namespaced_deployment_status("pause", namespace).status
        return status is not None and status.available_replicas == 2

    eventually(available, timeout=60, what="Deployment availableReplicas == 2")


# --------------------------------------------------------------------------- garbage collection


def test_deleting_owner_garbage_collects_child(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)

    def config_map(name: str, owner: client.V1ConfigMap | None = None) -> client.V1ConfigMap:
        refs = None
        if owner is not None:
            refs = [
                client.V1OwnerReference(
                    api_version="v1", kind="ConfigMap", name=_meta(owner).name, uid=_meta(owner).uid
                )
            ]
        return client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=name, owner_references=refs), data={"k": "v"}
        )

    owner = core.create_namespaced_config_map(namespace, config_map("owner"))
    core.create_namespaced_config_map(namespace, config_map("child", owner))
    keeper = core.create_namespaced_config_map(namespace, config_map("keeper"))
    core.create_namespaced_config_map(namespace, config_map("kept-child", keeper))

    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    eventually(
        lambda: _status_of(lambda: core.read_namespaced_config_map("child", namespace)) == 404,
        timeout=60,
        what="the orphaned child ConfigMap to be garbage-collected",
    )
    # A child whose owner still exists must survive the same collector pass.
    assert _meta(core.read_namespaced_config_map("kept-child", namespace)).name == "kept-child"


# --------------------------------------------------------------------------- RBAC


def test_service_account_with_namespaced_role_is_forbidden_elsewhere(
    api: client.ApiClient, cluster: Path, namespace: str, tmp_path: Path
) -> None:
    core = client.CoreV1Api(api)
    other = f"{namespace}-other"
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=other, labels={"loom.dev/e2e": "true"}))
    )
    try:
        kubeconfig = service_account_kubeconfig(
            cluster,
            tmp_path / "reader.kubeconfig",
            namespace,
            "reader",
            [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "create"]}],
            namespaced=True,
        )
        with config.new_client_from_config(str(kubeconfig)) as sa_api:
            review = client.AuthenticationV1Api(sa_api).create_self_subject_review(
                client.V1SelfSubjectReview()
            )
            user = review.status.user_info if review.status else None
            assert user is not None
            assert user.username == f"system:serviceaccount:{namespace}:reader"

            sa_core = client.CoreV1Api(sa_api)
            # The RBAC authorizer reads bindings through an informer: allow it to catch up.
            eventually(
                lambda: _status_of(lambda: sa_core.list_namespaced_config_map(namespace)) == 200,
                timeout=30,
                what="the RoleBinding to take effect",
            )
            body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="from-sa"))
            assert _status_of(lambda: sa_core.create_namespaced_config_map(namespace, body)) == 200

            assert _status_of(lambda: sa_core.list_namespaced_config_map(other)) == 403
            assert _status_of(lambda: sa_core.create_namespaced_config_map(other, body)) == 403
            assert _status_of(lambda: sa_core.list_config_map_for_all_namespaces()) == 403
            # Verbs the Role does not grant are denied in its own namespace too.
            assert _status_of(lambda: sa_core.delete_namespaced_config_map("from-sa", namespace)) == 403
            assert _status_of(lambda: sa_core.list_namespaced_secret(namespace)) == 403
    finally:
        core.delete_namespace(other)
