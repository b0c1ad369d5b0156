"""The LLM engine end to end against fake providers (real HTTP, each provider's wire format)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from tests.fakes.llm_server import FakeLLMServer, Reply, last_user_text
from tests.fakes.virtual_time import VirtualSleep
from tests.support.endpoints import loopback_allowed

from loom.api.router_policy import TierDefinition
from loom.api.worker import WorkerSpec
from loom.errors import InvalidInput, InvalidOutput, TaskError, TaskTimeout
from loom.llm.errors import InputTooLong
from loom.llm.factory import build_model_client
from loom.messages import TaskMessage
from loom.worker.llm_engine import LLMEngine

ENV = {"ANTHROPIC_API_KEY": "sk-ant-test", "OPENAI_API_KEY": "sk-test"}
OUT = {
    "type": "object",
    "required": ["label", "score"],
    "properties": {"label": {"type": "string"}, "score": {"type": "integer", "minimum": 0}},
}


def spec(**kw: Any) -> WorkerSpec:
    base: dict[str, Any] = {
        "name": "classifier",
        "system_prompt": "Classify the text.",
        "input_schema": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
        "output_schema": OUT,
    }
    base.update(kw)
    return WorkerSpec(**base)


def engine(
    fake: FakeLLMServer, worker: WorkerSpec, vsleep: VirtualSleep, base_dir: Path | None = None, **tier: Any
) -> LLMEngine:
    t = TierDefinition(name="standard", backend=fake.kind, model="m-1", base_url=fake.url, **tier)
    env = ENV | loopback_allowed(fake.url)
    client = build_model_client(t, env=env, sleep=vsleep)
    return LLMEngine(worker, t, provider=client, base_dir=base_dir, env=env)


def task(**payload: Any) -> TaskMessage:
    return TaskMessage(worker_type="classifier", payload=payload or {"text": "hello"})


async def test_schema_breaking_reply_fixed_on_retry(any_fake: FakeLLMServer, vsleep: VirtualSleep) -> None:
    eng = engine(any_fake, spec(), vsleep)
    any_fake.push(
        Reply(json={"label": "greeting", "score": -1}, prompt_tokens=100, completion_tokens=10),
        Reply(
            json={"label": "greeting", "score": 3}, prompt_tokens=120, completion_tokens=9, model="m-1-0613"
        ),
    )
    outcome = await eng.run(task())
    assert outcome.output == {"label": "greeting", "score": 3}
    assert outcome.model_used == "m-1-0613"
    assert (outcome.token_usage.prompt_tokens, outcome.token_usage.completion_tokens) == (220, 19)
    feedback = last_user_text(any_fake.requests[1])
    assert "score: -1 is less than the minimum of 0" in feedback
    await eng.close()


async def test_malformed_json_fixed_on_retry(any_fake: FakeLLMServer, vsleep: VirtualSleep) -> None:
    eng = engine(any_fake, spec(), vsleep)
    any_fake.push(
        Reply(text='{"label": "x", "score": '), Reply(text='```json\n{"label": "x", "score": 1}\n```')
    )
    assert (await eng.run(task())).output == {"label": "x", "score": 1}
    assert "no JSON object found" in last_user_text(any_fake.requests[1])
    await eng.close()


async def test_output_retries_exhausted(any_fake: FakeLLMServer, vsleep: VirtualSleep) -> None:
    eng = engine(any_fake, spec(output_retries=2), vsleep)
    any_fake.push(*[Reply(json={"label": 5})] * 3)
    with pytest.raises(InvalidOutput) as info:
        await eng.run(task())
    assert "after 3 attempt(s)" in str(info.value)
    assert "label: 5 is not of type 'string'" in str(info.value)
    assert "'score' is a required property" in str(info.value)
    assert len(any_fake.requests) == 3
    await eng.close()


async def test_non_object_reply_is_rejected(openai_fake: FakeLLMServer, vsleep: VirtualSleep) -> None:
    eng = engine(openai_fake, spec(output_schema=None, output_retries=0), vsleep)
    openai_fake.push(Reply(text="[1, 2]"))
    with pytest.raises(InvalidOutput, match="must be a JSON object"):
        await eng.run(task())
    await eng.close()


async def test_input_contract_checked_before_any_call(any_fake: FakeLLMServer, vsleep: VirtualSleep) -> None:
    eng = engine(any_fake, spec(), vsleep)
    with pytest.raises(InvalidInput, match="'text' is a required property"):
        await eng.run(task(body="x"))
    assert any_fake.requests == []
    await eng.close()


async def test_max_input_tokens_enforced_before_the_call(
    openai_fake: FakeLLMServer, vsleep: VirtualSleep
) -> None:
    eng = engine(openai_fake, spec(max_input_tokens=100), vsleep)
    with pytest.raises(InputTooLong, match="over max_input_tokens=100") as info:
        await eng.run(task(text="word " * 200))
    assert info.value.retryable is False
    assert openai_fake.requests == []
    await eng.close()


async def test_statelessness_between_tasks(any_fake: FakeLLMServer, vsleep: VirtualSleep) -> None:
    eng = engine(any_fake, spec(), vsleep)
    any_fake.push(Reply(json={"label": "bad"}), Reply(json={"label": "TASK-ONE-ANSWER", "score": 1}))
    await eng.run(task(text="TASK-ONE-SECRET"))
    any_fake.push(Reply(json={"label": "two", "score": 2}))
    await eng.run(task(text="task two"))
    second = json.dumps(any_fake.requests[-1])
    for leftover in ("TASK-ONE-SECRET", "TASK-ONE-ANSWER", "rejected"):
        assert leftover not in second
    first_messages = any_fake.requests[0]["messages"]
    assert len(any_fake.requests[-1]["messages"]) == len(first_messages)
    await eng.close()


async def test_tool_call_round_trip(any_fake: FakeLLMServer, vsleep: VirtualSleep) -> None:
    tools = [
        {
            "name": "calc",
            "type": "tool",
            "provider": "tests.fakes.tools.Adder",
            "config": {"offset": 1},
        }
    ]
    eng = engine(any_fake, spec(knowledge_silos=tools), vsleep)
    any_fake.push(
        Reply(tool_calls=[("add", {"a": 2, "b": 3}), ("add", {"a": "x"})]),
        Reply(json={"label": "sum", "score": 6}),
    )
    outcome = await eng.run(task())
    assert outcome.output == {"label": "sum", "score": 6}
    sent = json.dumps(any_fake.requests[1])
    assert '{\\"sum\\": 6}' in sent  # the tool's result went back to the model
    assert "invalid arguments" in sent  # and so did the failing call's error
    assert "add" in json.dumps(any_fake.requests[0]["tools"])
    await eng.close()


async def test_tool_rounds_are_bounded(openai_fake: FakeLLMServer, vsleep: VirtualSleep) -> None:
    tools = [{"name": "calc", "type": "tool", "provider": "tests.fakes.tools.Adder"}]
    eng = engine(openai_fake, spec(knowledge_silos=tools, max_tool_rounds=2), vsleep)
    openai_fake.push(
        *[Reply(tool_calls=[("add", {"a": 1, "b": 1})])] * 2, Reply(json={"label": "done", "score": 2})
    )
    assert (await eng.run(task())).output == {"label": "done", "score": 2}
    assert ["tools" in r for r in openai_fake.requests] == [True, True, False]
    openai_fake.push(*[Reply(tool_calls=[("add", {"a": 1, "b": 1})])] * 3)
    with pytest.raises(TaskError, match="max_tool_rounds=2") as info:
        await eng.run(task())
    assert info.value.code == "tool_rounds_exceeded"
    await eng.close()


async def test_rate_limit_then_success(any_fake: FakeLLMServer, vsleep: VirtualSleep) -> None:
    eng = engine(any_fake, spec(), vsleep)
    any_fake.push(Reply(status=429, headers={"retry-after": "2"}), Reply(json={"label": "ok", "score": 0}))
    assert (await eng.run(task())).output == {"label": "ok", "score": 0}
    assert vsleep.calls and vsleep.calls[0] >= 2
    await eng.close()


@pytest.mark.parametrize(
    ("reply", "code", "retryable"),
    [
        (Reply(status=401, error="bad key"), "provider_authentication", False),
        (Reply(status=400, error="bad request"), "provider_bad_request", False),
        (Reply(status=400, error="maximum context length exceeded"), "input_too_long", False),
        (Reply(status=500), "provider_unavailable", True),
    ],
)
async def test_provider_errors_become_task_errors(
    any_fake: FakeLLMServer, vsleep: VirtualSleep, reply: Reply, code: str, retryable: bool
) -> None:
    eng = engine(any_fake, spec(), vsleep, max_retries=1)
    any_fake.push(reply, reply)
    with pytest.raises(TaskError) as info:
        await eng.run(task())
    assert (info.value.code, info.value.retryable) == (code, retryable)
    assert len(any_fake.requests) == (2 if retryable else 1)
    await eng.close()


async def test_provider_timeout_is_a_task_timeout(openai_fake: FakeLLMServer, vsleep: VirtualSleep) -> None:
    eng = engine(openai_fake, spec(), vsleep, timeout_seconds=0.2, max_retries=0)
    openai_fake.push(Reply(json={"label": "late", "score": 1}, delay=3))
    with pytest.raises(TaskTimeout):
        await eng.run(task())
    await eng.close()


async def test_file_refs_resolved_from_workspace(
    openai_fake: FakeLLMServer, vsleep: VirtualSleep, tmp_path: Path
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "doc.json").write_text('{"pages": 12}')
    (ws / "notes.txt").write_text("plain notes")
    (tmp_path / "secret.json").write_text('{"secret": 1}')
    os.symlink(tmp_path / "secret.json", ws / "link.json")
    worker = spec(input_schema=None, workspace_dir=str(ws), resolve_file_refs=["file_ref", "notes"])
    eng = engine(openai_fake, worker, vsleep)
    openai_fake.push(Reply(json={"label": "doc", "score": 12}))
    await eng.run(task(file_ref="doc.json", notes="notes.txt"))
    sent = json.loads(last_user_text(openai_fake.requests[0]))
    assert sent["file_ref_content"] == {"pages": 12} and sent["notes_content"] == "plain notes"
    for ref, message in [
        ("../secret.json", "'..'"),
        ("/etc/passwd", "absolute"),
        ("link.json", "symlink"),
        ("missing.json", "does not exist"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            await eng.run(task(file_ref=ref))
    assert len(openai_fake.requests) == 1
    await eng.close()


async def test_knowledge_in_system_prompt(
    openai_fake: FakeLLMServer, vsleep: VirtualSleep, tmp_path: Path
) -> None:
    (tmp_path / "terms.md").write_text("Certiorari: review by a higher court.")
    (tmp_path / "shots.jsonl").write_text('{"input": "Q1", "output": {"label": "A1", "score": 1}}\n')
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.md").write_text("Always be kind.")
    worker = spec(
        knowledge_sources=[{"path": "terms.md"}, {"path": "shots.jsonl", "inject_as": "few_shot"}],
        knowledge_silos=[{"name": "rules", "type": "folder", "path": "rules"}],
    )
    eng = engine(openai_fake, worker, vsleep, base_dir=tmp_path)
    openai_fake.push(Reply(json={"label": "a", "score": 1}))
    await eng.run(task())
    system = openai_fake.requests[0]["messages"][0]["content"]
    for piece in ("Certiorari", "Input: Q1", "Always be kind.", "Classify the text.", '"minimum": 0'):
        assert piece in system
    assert "silo_updates" not in system
    await eng.close()


async def test_silo_updates_applied_and_stripped(
    openai_fake: FakeLLMServer, vsleep: VirtualSleep, tmp_path: Path
) -> None:
    silo = tmp_path / "learned"
    silo.mkdir()
    (silo / "a.md").write_text("pattern A")
    worker = spec(
        output_schema={**OUT, "additionalProperties": False},
        knowledge_silos=[{"name": "learned", "type": "folder", "path": str(silo), "mode": "readwrite"}],
    )
    eng = engine(openai_fake, worker, vsleep)
    updates = [
        {"silo": "learned", "action": "add", "filename": "b.md", "content": "pattern B"},
        {"silo": "learned", "action": "delete", "filename": "a.md"},
    ]
    openai_fake.push(Reply(json={"label": "x", "score": 1, "silo_updates": updates}))
    outcome = await eng.run(task())
    assert outcome.output == {"label": "x", "score": 1}
    assert sorted(p.name for p in silo.iterdir()) == ["b.md"]
    assert "silo_updates" in openai_fake.requests[0]["response_format"]["json_schema"]["schema"]["properties"]
    openai_fake.push(Reply(json={"label": "y", "score": 2}))
    await eng.run(task())
    system = openai_fake.requests[1]["messages"][0]["content"]
    assert "pattern B" in system and "pattern A" not in system
    await eng.close()


async def test_silo_writes_outside_the_folder_are_refused(
    openai_fake: FakeLLMServer, vsleep: VirtualSleep, tmp_path: Path
) -> None:
    silo = tmp_path / "learned"
    silo.mkdir()
    worker = spec(
        output_retries=1,
        knowledge_silos=[
            {"name": "learned", "type": "folder", "path": str(silo), "mode": "readwrite"},
            {"name": "fixed", "type": "folder", "path": str(silo)},
        ],
    )
    eng = engine(openai_fake, worker, vsleep)
    evil = [
        {"silo": "learned", "action": "add", "filename": "ok.md", "content": "fine"},
        {"silo": "learned", "action": "add", "filename": "../../evil.md", "content": "x"},
    ]
    openai_fake.push(
        Reply(json={"label": "x", "score": 1, "silo_updates": evil}),
        Reply(json={"label": "x", "score": 1, "silo_updates": [{**evil[0], "silo": "fixed"}]}),
    )
    with pytest.raises(InvalidOutput, match="read-only"):
        await eng.run(task())
    assert "leaves the workspace" not in last_user_text(openai_fake.requests[1])
    assert "'..' is not allowed" in last_user_text(openai_fake.requests[1])
    assert list(silo.iterdir()) == []
    assert not (tmp_path.parent / "evil.md").exists()
    await eng.close()


async def test_schema_refs_resolved(openai_fake: FakeLLMServer, vsleep: VirtualSleep) -> None:
    worker = spec(output_schema=None, output_schema_ref="tests.fakes.contracts.Verdict")
    eng = engine(openai_fake, worker, vsleep)
    openai_fake.push(Reply(json={"verdict": "yes"}), Reply(json={"verdict": "yes", "confidence": 0.9}))
    assert (await eng.run(task())).output == {"verdict": "yes", "confidence": 0.9}
    assert "'confidence' is a required property" in last_user_text(openai_fake.requests[1])
    await eng.close()
