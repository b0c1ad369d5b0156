"""Which existing objects the operator may apply over: only its own children of the resource."""

from __future__ import annotations

from typing import Any

from loom_operator.adoption import adoption_problem
from loom_operator.render.common import Owner, config_map, metadata

OWNER = Owner(kind="Worker", name="w", namespace="ns", uid="uid-1")


def existing(**meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "w-config", "namespace": "ns", **meta},
    }


def test_own_child_by_owner_reference_is_applied_over() -> None:
    assert adoption_problem(config_map(OWNER, "worker.yaml", "x"), OWNER) is None


def test_rendered_offline_child_with_the_resources_labels_is_adopted() -> None:
    offline = config_map(Owner(kind="Worker", name="w", namespace="ns"), "worker.yaml", "x")
    assert "ownerReferences" not in offline["metadata"]
    assert adoption_problem(offline, OWNER) is None


def test_child_of_an_earlier_resource_of_the_same_name_is_taken_over() -> None:
    earlier = config_map(Owner(kind="Worker", name="w", namespace="ns", uid="uid-0"), "worker.yaml", "x")
    assert adoption_problem(earlier, OWNER) is None


def test_unlabelled_object_is_refused_with_what_to_do() -> None:
    problem = adoption_problem(existing(labels={"app": "other"}), OWNER)
    assert problem is not None
    assert (
        "ConfigMap 'w-config' already exists and was not created by the Loom operator for Worker 'w'"
        in problem
    )
    assert "left untouched" in problem and "rename the Worker" in problem


def test_managed_by_label_alone_or_another_resources_label_is_refused() -> None:
    assert adoption_problem(existing(labels={"app.kubernetes.io/managed-by": "loom-operator"}), OWNER)
    other = metadata(Owner(kind="Worker", name="w2", namespace="ns"), "w-config")
    assert adoption_problem(existing(labels=other["labels"]), OWNER)
    # Another kind's child of the same name (a Pipeline "w" also renders w-config).
    pipeline = metadata(Owner(kind="Pipeline", name="w", namespace="ns"), "w-config")
    assert adoption_problem(existing(labels=pipeline["labels"]), OWNER)


def test_object_controlled_by_something_else_is_refused_even_with_our_labels() -> None:
    labels = metadata(OWNER, "w-config")["labels"]
    foreign = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "w", "uid": "uid-9", "controller": True}
    problem = adoption_problem(existing(labels=labels, ownerReferences=[foreign]), OWNER)
    assert problem is not None and "belongs to Deployment 'w', not to Worker 'w'" in problem
    pipeline = {**foreign, "apiVersion": "loom.dev/v1alpha1", "kind": "Pipeline"}
    assert adoption_problem(existing(labels=labels, ownerReferences=[pipeline]), OWNER)


def test_a_non_controller_reference_to_us_is_not_ownership() -> None:
    ref = {"apiVersion": "loom.dev/v1alpha1", "kind": "Worker", "name": "w", "uid": "uid-1"}
    assert adoption_problem(existing(ownerReferences=[ref]), OWNER)
