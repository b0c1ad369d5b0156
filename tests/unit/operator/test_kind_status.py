"""Each kind's own status fields come from its status model, through the per-kind table (pure)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from loom.api import load_paths
from loom.api.kinds import KIND_NAMES
from loom.api.status import STATUS_MODELS, EvalRun
from loom_operator.dispatch import KIND_OPS, ops_for
from loom_operator.kind_status import STATUS_BUILDERS, Observation, StatusView, kind_fields
from loom_operator.readiness import ChildDeployment

CONFIG = Path(__file__).resolve().parents[3] / "config"
#: The samples have every kind but EvalSuite, whose example lives with the eval suites.
EXAMPLES = [CONFIG / "samples"]
NOW = datetime(2026, 1, 5, 12, 0, 30, tzinfo=UTC)


def _spec(kind: str) -> object:
    return next(r.spec for r in load_paths(EXAMPLES) if r.kind == kind)


def _child(tier: str, replicas: int, ready: int) -> ChildDeployment:
    return ChildDeployment(
        namespace="ns",
        name=f"w-{tier}",
        owner_kind="Worker",
        owner_name="w",
        tier=tier,
        uid="u",
        generation=1,
        observed_generation=1,
        replicas=replicas,
        status_replicas=replicas,
        updated_replicas=replicas,
        ready_replicas=ready,
        available_replicas=ready,
        config_hash=None,
    )


def test_every_registered_kind_has_operations_and_a_status_builder() -> None:
    assert set(KIND_OPS) == set(STATUS_BUILDERS) == set(KIND_NAMES)
    for kind, ops in KIND_OPS.items():
        assert ops_for(_spec(kind)) is ops


def test_worker_fields_sum_tiers_and_keep_a_cleared_lag_as_null() -> None:
    spec = _spec("Worker")
    tiers = spec.served_tiers  # type: ignore[attr-defined]
    view = StatusView(now=NOW, created=NOW, children={tiers[0]: _child(tiers[0], 3, 2)})
    fields = kind_fields("Worker", spec, view)
    # No scaler observation: the summed lag is written as null, so a merge patch clears an old value ...
    assert fields["lag"] is None
    # ... while a tier entry leaves its unknown lag out instead of writing null inside a list.
    assert fields["tiers"][0] == {"name": tiers[0], "replicas": 3, "readyReplicas": 2}
    assert fields["replicaSummary"] == "2/3"
    assert fields["tierNames"] == ",".join(tiers)
    STATUS_MODELS["Worker"].model_validate(fields)

    observed = StatusView(
        now=NOW, created=NOW, observations={t: Observation(lag=5, desired=2) for t in tiers}
    )
    fields = kind_fields("Worker", spec, observed)
    assert fields["lag"] == 5 * len(tiers)
    assert fields["tiers"][0]["desiredReplicas"] == 2


def test_eval_suite_keeps_the_previous_run_until_the_new_job_has_a_verdict() -> None:
    spec = _spec("EvalSuite")
    previous = EvalRun(job_name="old", passed=True, score=0.9, cases=3).to_manifest_dict()
    fields = kind_fields(
        "EvalSuite", spec, StatusView(now=NOW, created=NOW, job="new", previous={"lastRun": previous})
    )
    assert fields == {"jobName": "new", "lastRun": previous}
    verdict = EvalRun(job_name="new", passed=False, score=0.1, cases=3)
    fields = kind_fields("EvalSuite", spec, StatusView(now=NOW, created=NOW, job="new", eval_run=verdict))
    assert fields["lastRun"]["passed"] is False and fields["lastRun"]["jobName"] == "new"
    # A lastRun edited into something that is not a run is dropped, not fatal.
    fields = kind_fields(
        "EvalSuite", spec, StatusView(now=NOW, created=NOW, job="new", previous={"lastRun": {"x": 1}})
    )
    assert fields["lastRun"] is None
    # Before its Job exists, an EvalSuite has nothing of its own to report.
    assert kind_fields("EvalSuite", spec, StatusView(now=NOW, created=NOW)) == {}


@pytest.mark.parametrize("kind", ["Pipeline", "RouterPolicy", "Schedule"])
def test_other_kinds_write_what_their_status_model_accepts(kind: str) -> None:
    fields = kind_fields(kind, _spec(kind), StatusView(now=NOW, created=NOW, catalog_size=4))
    assert fields
    STATUS_MODELS[kind].model_validate(fields)
    if kind == "RouterPolicy":
        assert fields["workers"] == 4
