"""Wire messages: the original field names, tenant, priority parsing, malformed input, dead-letter bytes."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from loom.dead_letters import build_dead_letter, dead_letter_id, decode_original, encode_original
from loom.messages import DeadLetterReason, GoalMessage, Priority, TaskMessage, TaskResult, TaskStatus


def test_original_loom_task_message_parses() -> None:
    raw = json.dumps(
        {
            "task_id": "t1",
            "parent_task_id": "g1",
            "worker_type": "summarizer",
            "payload": {"text": "x"},
            "model_tier": "local",
            "priority": "high",
            "request_id": "r",
            "metadata": {"k": 1},
            "unknown_newer_field": True,
        }
    ).encode()
    t = TaskMessage.from_bytes(raw)
    assert (t.task_id, t.result_key, t.priority, t.tenant) == ("t1", "g1", Priority.HIGH, "default")
    again = TaskMessage.from_bytes(t.to_bytes())
    assert again == t


@pytest.mark.parametrize("priority", ["CRITICAL", "critical", 3, "3"])
def test_priority_by_name_or_number(priority: object) -> None:
    assert TaskMessage(worker_type="w", priority=priority).priority == Priority.CRITICAL  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"[]",
        b'{"payload": {}}',
        b'{"worker_type": "a.b"}',
        b'{"worker_type": "w", "priority": "urgent"}',
        b'{"worker_type": "w", "payload": []}',
        b'{"worker_type": "w", "tenant": ""}',
    ],
)
def test_malformed_task_messages_are_rejected(raw: bytes) -> None:
    with pytest.raises(ValidationError):
        TaskMessage.from_bytes(raw)


def test_result_key_and_exclude_none() -> None:
    r = TaskResult(task_id="t", worker_type="w", status=TaskStatus.FAILED, error="x", error_code="c")
    doc = json.loads(r.to_bytes())
    assert r.result_key == "t" and "output" not in doc and doc["status"] == "failed"
    g = GoalMessage(instruction="do", pipeline="p")
    assert GoalMessage.from_bytes(g.to_bytes()).pipeline == "p"


@pytest.mark.parametrize("data", [b'{"a": 1}', "héllo".encode(), b"\xff\xfe\x00", b"b64:looks-encoded"])
def test_dead_letter_keeps_the_original_bytes(data: bytes) -> None:
    assert decode_original(encode_original(data)) == data


def test_dead_letter_id_is_stable_per_source() -> None:
    assert dead_letter_id("LOOM_TASKS:1", b"x") == dead_letter_id("LOOM_TASKS:1", b"x")
    assert dead_letter_id("LOOM_TASKS:1", b"x") != dead_letter_id("LOOM_TASKS:2", b"x")
    t = TaskMessage(worker_type="w", model_tier="local", tenant="acme")
    dl = build_dead_letter(
        DeadLetterReason.RATE_LIMITED,
        "slow down",
        subject="loom.tasks.incoming",
        data=t.to_bytes(),
        origin="LOOM_INCOMING:9",
        role="router",
        task=t,
        deliveries=1,
    )
    assert (dl.task_id, dl.worker_type, dl.model_tier, dl.tenant) == (t.task_id, "w", "local", "acme")
    assert TaskMessage.from_bytes(decode_original(dl.original)) == t
