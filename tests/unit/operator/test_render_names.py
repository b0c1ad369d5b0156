"""The name limits of ``loom.api.names`` hold for what the operator really renders.

A resource whose name is as long as its kind allows, with the longest tier, must still give
children whose names and label values the API server accepts (and KEDA's label from the
ScaledObject name); one character more would not.
"""

from __future__ import annotations

import re
from typing import Any

from loom.api import PipelineSpec, RouterPolicySpec, ScheduleSpec, WorkerSpec
from loom.api.common import TIER_MAX_LENGTH
from loom.api.names import MAX_NAME_LENGTH, name_problem
from loom_operator.render import (
    Owner,
    render_pipeline,
    render_router_policy,
    render_schedule,
    render_worker,
)
from loom_operator.settings import Settings

SETTINGS = Settings(image="example.org/loom:test", nats_url="nats://nats.loom:4222")
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _longest(kind: str) -> str:
    return "n" * MAX_NAME_LENGTH[kind]


def _check(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        meta = obj["metadata"]
        name = meta["name"]
        assert len(name) <= 63 and DNS_1123_LABEL.match(name), name
        if obj["kind"] == "Service":
            assert DNS_1035_LABEL.match(name), name
        for value in meta.get("labels", {}).values():
            assert len(value) <= 63 and LABEL_VALUE.match(value), value


def test_the_longest_worker_name_with_the_longest_tier_fits() -> None:
    tier = "t" * TIER_MAX_LENGTH
    name = _longest("Worker")
    spec = WorkerSpec.model_validate({"name": "w", "systemPrompt": "p", "defaultModelTier": tier})
    objects = render_worker(Owner("Worker", name, "ns"), spec, SETTINGS, keda=True)
    assert {o["kind"] for o in objects} >= {"ConfigMap", "Deployment", "Service", "ScaledObject"}
    assert max(len(o["metadata"]["name"]) for o in objects) == 63  # the limit is tight, not loose
    _check(objects)
    assert name_problem("Worker", name) is None and name_problem("Worker", name + "n") is not None


def test_the_longest_names_of_the_other_kinds_fit() -> None:
    stage = {"name": "a", "workerType": "w", "inputMapping": {"t": "goal.context.t"}}
    pipeline = PipelineSpec.model_validate({"name": "p", "pipelineStages": [stage]})
    schedule = ScheduleSpec.model_validate({"name": "s", "intervalSeconds": 60, "goal": {"pipeline": "p"}})
    rendered = {
        "Pipeline": render_pipeline(Owner("Pipeline", _longest("Pipeline"), "ns"), pipeline, SETTINGS),
        "Schedule": render_schedule(Owner("Schedule", _longest("Schedule"), "ns"), schedule, SETTINGS),
        "RouterPolicy": render_router_policy(
            Owner("RouterPolicy", _longest("RouterPolicy"), "ns"), RouterPolicySpec(), SETTINGS, workers={}
        ),
    }
    for kind, objects in rendered.items():
        _check(objects)
        assert max(len(o["metadata"]["name"]) for o in objects) == 63, kind
