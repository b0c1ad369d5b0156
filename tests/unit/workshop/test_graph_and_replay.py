"""The pipeline graph's layout, and the check of an edited dead letter before its replay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loom.dead_letters import encode_original
from loom.messages import DeadLetter, DeadLetterReason, TaskMessage
from loom.workshop.dead_letters import ReplayError, corrected_body, editable
from loom.workshop.graph import BOX_W, GAP_X, layout
from loom.workshop.project import Project

ROOT = Path(__file__).resolve().parents[3]


def test_levels_are_columns_and_parallel_stages_share_one() -> None:
    snap = Project(ROOT / "config" / "samples").load()
    [pipeline] = snap.of_kind("Pipeline")
    g = layout(pipeline.spec)
    assert g.levels == [["extract"], ["classify", "summarise"], ["report"]]
    at = {n.name: (n.level, n.x, n.y) for n in g.nodes}
    assert at["classify"][:2] == at["summarise"][:2] == (1, at["extract"][1] + BOX_W + GAP_X)
    assert at["classify"][2] < at["summarise"][2]
    assert sorted((e.source, e.target) for e in g.edges) == [
        ("classify", "report"),
        ("extract", "classify"),
        ("extract", "report"),
        ("extract", "summarise"),
        ("summarise", "report"),
    ]
    assert g.width == 2 * 16 + 3 * BOX_W + 2 * GAP_X


def _dead(task: TaskMessage | None, raw: bytes) -> DeadLetter:
    return DeadLetter(
        reason=DeadLetterReason.UNKNOWN_WORKER_TYPE if task else DeadLetterReason.MALFORMED,
        subject="loom.tasks.incoming",
        original=encode_original(raw),
        task_id=task.task_id if task else None,
    )


def test_unchanged_text_replays_the_kept_original() -> None:
    task = TaskMessage(worker_type="nobody", payload={"a": 1})
    dl = _dead(task, task.to_bytes())
    assert json.loads(editable(dl))["payload"] == {"a": 1}
    assert corrected_body(dl, editable(dl)) is None
    assert corrected_body(dl, editable(dl).replace("\n", "\r\n") + "\n") is None


def test_an_edited_task_must_still_be_a_task() -> None:
    task = TaskMessage(worker_type="nobody", payload={"a": 1})
    dl = _dead(task, task.to_bytes())
    fixed = json.loads(editable(dl)) | {"worker_type": "echo"}
    body = corrected_body(dl, json.dumps(fixed))
    assert body is not None and TaskMessage.model_validate_json(body).worker_type == "echo"
    with pytest.raises(ReplayError, match="not JSON"):
        corrected_body(dl, "{")
    with pytest.raises(ReplayError, match="must be a JSON object"):
        corrected_body(dl, "[1]")
    with pytest.raises(ReplayError, match="not a valid TaskMessage: worker_type"):
        corrected_body(dl, json.dumps(fixed | {"worker_type": "bad subject!"}))


def test_a_malformed_original_is_shown_as_received_and_can_be_fixed() -> None:
    dl = _dead(None, b'{"worker_type": ')
    assert editable(dl) == '{"worker_type": '
    body = corrected_body(dl, '{"worker_type": "echo", "payload": {}}')
    assert body is not None and json.loads(body)["worker_type"] == "echo"
    with pytest.raises(ReplayError, match="neither a task"):
        corrected_body(dl, '{"x": 1}')
