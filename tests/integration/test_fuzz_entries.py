"""Fuzzing every message entry with hypothesis-generated bodies, over a real nats-server.

Entries: the router's ``loom.tasks.incoming``, a worker's ``loom.tasks.<type>.<tier>``,
a pipeline's ``loom.goals.<name>``, the orchestrator's ``loom.goals.incoming`` and
``loom.results.*``. For each: no process dies or disconnects, and every message ends
as exactly one result or one dead letter with a reason. Generation is derandomized
(the same cases on every run); ``LOOM_FUZZ_EXAMPLES`` sets how many per entry.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from tests.fakes.llm_server import FakeLLMServer
from tests.support.orchestrators import planner, running_orchestrator, write_config
from tests.support.pipelines import running_pipeline
from tests.support.processes import (
    LoomProcess,
    LoomProcesses,
    bus,
    echo_worker,
    loom_procs,
    poll,
    write_yaml,
)
from tests.support.task_desk import TaskDesk

from loom.bus import Bus
from loom.messages import DeadLetter, GoalMessage, TaskMessage
from loom.subjects import GOALS_INCOMING, STREAM_GOALS, STREAM_INCOMING, STREAM_TASKS, TASKS_INCOMING

pytestmark = pytest.mark.integration
__all__ = ["bus", "loom_procs"]

EXAMPLES = int(os.environ.get("LOOM_FUZZ_EXAMPLES", "300"))
T = TypeVar("T")


def draw(strategy: st.SearchStrategy[T], n: int = EXAMPLES) -> list[T]:
    """``n`` examples of ``strategy``, the same on every run."""
    out: list[T] = []

    @settings(
        max_examples=n,
        database=None,
        derandomize=True,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def take(x: T) -> None:
        out.append(x)

    take()
    return out


# Ids: valid tokens, dotted ones, wildcards, whitespace, unicode, empty, huge, not strings at all.
valid_ids = st.from_regex(r"\A[A-Za-z0-9_-]{1,40}\Z")
ids = st.one_of(
    valid_ids,
    st.text(max_size=30),
    st.text(alphabet="ab.*> \t", min_size=1, max_size=10),
    st.sampled_from(["x" * 5000, "x" * 129, "order.42", "", "a..b"]),
    st.integers(),
    st.none(),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
# payload keys the echo backend ignores (``fail``, ``sleep`` and ``output`` steer it)
payloads = st.dictionaries(st.sampled_from(["a", "text", "n", "ü"]), json_values, max_size=3)


def task_docs(worker_types: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"task_id": ids, "worker_type": st.sampled_from(worker_types) | ids},
        optional={
            "parent_task_id": ids,
            "model_tier": st.sampled_from(["local", "frontier"]) | ids,
            "payload": payloads | json_values,
            "priority": st.sampled_from([0, 3, "high", "bogus", 9, None]),
            "tenant": st.text(max_size=10) | st.sampled_from(["x" * 200]),
            "metadata": st.dictionaries(st.text(max_size=5), json_values, max_size=2),
        },
    )


def valid_task_docs(worker_types: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Tasks the message model accepts, with random content: they reach routing and the workers."""
    return st.fixed_dictionaries(
        {"task_id": valid_ids, "worker_type": st.sampled_from(worker_types)},
        optional={
            "parent_task_id": valid_ids,
            "model_tier": st.sampled_from(["local", "frontier"]) | valid_ids,
            "payload": payloads,
            "priority": st.sampled_from([0, 1, 2, 3, "high", "low"]),
            "tenant": st.text(min_size=1, max_size=10),
            "metadata": st.dictionaries(st.text(max_size=5), json_values, max_size=2),
        },
    )


def valid_goal_docs(pipelines: list[str | None]) -> st.SearchStrategy[dict[str, Any]]:
    """Goals the message model accepts, with random content."""
    return st.fixed_dictionaries(
        {"goal_id": valid_ids},
        optional={
            "instruction": st.text(max_size=30),
            "context": st.dictionaries(st.text(max_size=5), json_values, max_size=3),
            "pipeline": st.sampled_from(pipelines),
            "tenant": st.text(min_size=1, max_size=10),
        },
    )


def goal_docs(pipelines: list[str | None]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"goal_id": ids},
        optional={
            "instruction": st.text(max_size=30) | json_values,
            "context": st.dictionaries(st.text(max_size=5), json_values, max_size=3) | json_values,
            "pipeline": st.sampled_from(pipelines) | ids,
            "priority": st.sampled_from([1, "low", "nope"]),
            "tenant": st.text(max_size=10),
        },
    )


def bodies(docs: st.SearchStrategy[dict[str, Any]], valid: st.SearchStrategy[dict[str, Any]]) -> list[bytes]:
    """Distinct message bodies: valid messages, message-shaped JSON, other JSON, raw bytes."""
    body = st.one_of(
        valid.map(lambda d: json.dumps(d).encode()),
        valid.map(lambda d: json.dumps(d).encode()),
        docs.map(lambda d: json.dumps(d).encode()),
        docs.map(lambda d: json.dumps(d).encode()),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=64),
    )
    return list(dict.fromkeys(draw(body)))


def parses(model: type[TaskMessage] | type[GoalMessage], data: bytes) -> Any:
    try:
        return model.model_validate_json(data)
    except ValidationError:
        return None


class Outcomes:
    """Every result on ``loom.results.>``, for accounting against what was sent."""

    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []

    def on_result(self, data: bytes) -> None:
        self.results.append(json.loads(data))


async def dead_letters_of(b: Bus, sent: list[bytes]) -> list[DeadLetter]:
    originals = set(sent)
    return [
        d.dead_letter
        for d in await b.dead_letters()
        if d.dead_letter.original.encode() in originals or _b64(d.dead_letter.original) in originals
    ]


def _b64(original: str) -> bytes:
    from loom.dead_letters import decode_original

    return decode_original(original)


def assert_alive(procs: list[tuple[LoomProcess, str]]) -> None:
    for p, role in procs:
        assert p.proc is not None and p.proc.poll() is None, p.log()[-2000:]
        with urllib.request.urlopen(f"{p.url}/healthz", timeout=5) as r:
            assert r.status == 200
        assert p.metric("loom_nats_connected", role=role) == 1
        log = p.log()
        assert "disconnected from NATS" not in log and "Traceback" not in log, log[-3000:]


async def account_tasks(b: Bus, outcomes: Outcomes, sent: list[bytes], streams: tuple[str, ...]) -> None:
    """Each body: a completed result for it, or exactly one dead letter with a reason (and nothing left)."""

    async def settled() -> bool:
        completed = sum(1 for r in outcomes.results if r.get("status") == "completed")
        return completed + len(await dead_letters_of(b, sent)) >= len(sent) and all(
            [await b.stream_messages(s) == 0 for s in streams]
        )

    await poll(settled, timeout=120, interval=0.5)
    letters = await dead_letters_of(b, sent)
    per_body = Counter(d.original for d in letters)
    assert max(per_body.values(), default=1) == 1, "a message was dead-lettered twice"
    assert all(d.reason and d.detail for d in letters)
    completed = [r for r in outcomes.results if r.get("status") == "completed"]
    assert len(completed) + len(letters) == len(sent)
    valid = sum(1 for body in sent if parses(TaskMessage, body) is not None)
    malformed = sum(1 for d in letters if d.reason == "malformed")
    assert malformed == len(sent) - valid  # exactly the bodies the message model refuses


async def test_fuzz_router_incoming(tmp_path: Path, loom_procs: LoomProcesses, bus: Bus) -> None:
    echo = echo_worker(tmp_path, "echo")
    router = loom_procs.router(echo)
    worker = loom_procs.worker(echo, "local")
    outcomes = Outcomes()
    await bus.subscribe_all_results(outcomes.on_result)
    sent = bodies(task_docs(["echo", "nobody"]), valid_task_docs(["echo", "nobody"]))
    for body in sent:
        await bus.js_publish(TASKS_INCOMING, body)
    await account_tasks(bus, outcomes, sent, (STREAM_INCOMING, STREAM_TASKS))
    assert_alive([(router, "router"), (worker, "worker")])


async def test_fuzz_worker_task_subject(tmp_path: Path, loom_procs: LoomProcesses, bus: Bus) -> None:
    echo = echo_worker(tmp_path, "echo")
    worker = loom_procs.worker(echo, "local")
    outcomes = Outcomes()
    await bus.subscribe_all_results(outcomes.on_result)
    sent = bodies(task_docs(["echo"]), valid_task_docs(["echo"]))
    for body in sent:
        await bus.js_publish("loom.tasks.echo.local", body)
    await account_tasks(bus, outcomes, sent, (STREAM_TASKS,))
    assert_alive([(worker, "worker")])


async def _account_goals(b: Bus, outcomes: Outcomes, sent: list[bytes]) -> None:
    async def settled() -> bool:
        goal_results = [r for r in outcomes.results if "goal_id" in r and "task_id" not in r]
        return len(goal_results) + len(await dead_letters_of(b, sent)) >= len(sent) and (
            await b.stream_messages(STREAM_GOALS) == 0
        )

    await poll(settled, timeout=120, interval=0.5)
    letters = await dead_letters_of(b, sent)
    assert max(Counter(d.original for d in letters).values(), default=1) == 1
    assert all(d.reason == "malformed" and d.detail for d in letters)
    goal_bodies = [body for body in sent if parses(GoalMessage, body) is not None]
    goals = [parses(GoalMessage, body) for body in goal_bodies]
    assert len(letters) == len(sent) - len(goals)
    finished = Counter(r["goal_id"] for r in outcomes.results if "goal_id" in r and "task_id" not in r)
    assert sum(finished.values()) == len(goals)  # one result per goal
    named = [g.goal_id for g, body in zip(goals, goal_bodies, strict=True) if b'"goal_id"' in body]
    assert all(finished[gid] == 1 for gid in named)  # ids given by the sender (others are generated)


def unique_goals(sent: list[bytes]) -> list[bytes]:
    """Drop goals whose id an earlier one has (a resubmitted goal gets its stored result again)."""
    seen: set[str] = set()
    out: list[bytes] = []
    for body in sent:
        goal = parses(GoalMessage, body)
        if goal is not None and goal.goal_id in seen:
            continue
        if goal is not None:
            seen.add(goal.goal_id)
        out.append(body)
    return out


async def echo(task: TaskMessage) -> dict[str, Any]:
    return {"echo": task.payload}


async def test_fuzz_pipeline_goals(nats_url: str, bus: Bus) -> None:
    desk = await TaskDesk(nats_url, {"echo": echo}).start()
    spec = {"name": "fz", "pipeline_stages": [{"name": "s", "worker_type": "echo"}]}
    outcomes = Outcomes()
    await bus.subscribe_all_results(outcomes.on_result)
    sent = unique_goals(bodies(goal_docs(["fz", None]), valid_goal_docs(["fz", None])))
    try:
        async with running_pipeline(nats_url, spec) as service:
            for body in sent:
                await bus.js_publish("loom.goals.fz", body)
            await _account_goals(bus, outcomes, sent)
            assert service.ready.is_set()
    finally:
        await desk.close()


async def test_fuzz_orchestrator_goals(
    nats_url: str, bus: Bus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes = Outcomes()
    await bus.subscribe_all_results(outcomes.on_result)
    sent = unique_goals(bodies(goal_docs([None]), valid_goal_docs([None])))[: max(1, EXAMPLES * 2 // 3)]
    llm = FakeLLMServer("openai", default=planner([{"subtasks": []}], {"answer": "none"}))
    async with llm:
        # the fake model listens on loopback, which a process allows only when told so (as `loom up` does)
        monkeypatch.setenv("LOOM_LOCAL_MODE", "1")
        monkeypatch.setenv("LOOM_MODEL_ENDPOINTS", json.dumps({"allowedUrls": [llm.root_url]}))
        async with running_orchestrator(write_config(tmp_path, llm.url), nats_url) as service:
            for body in sent:
                await bus.js_publish(GOALS_INCOMING, body)
            await _account_goals(bus, outcomes, sent)
            assert service.ready.is_set()


async def test_fuzz_results(tmp_path: Path, loom_procs: LoomProcesses, bus: Bus) -> None:
    """Anything on ``loom.results.*`` (the router reads them all to release its holds) leaves routing
    unharmed: results for tasks it holds capacity for, with any ``token_usage``, and garbage."""
    echo = echo_worker(tmp_path, "echo")
    policy = write_yaml(
        tmp_path,
        "policy",
        {
            "apiVersion": "loom.dev/v1alpha1",
            "kind": "RouterPolicy",
            "metadata": {"name": "default"},
            "spec": {"rateLimits": {"local": {"maxConcurrent": 4, "tokensPerMinute": 10_000_000}}},
        },
    )
    router = loom_procs.router(policy, echo)
    worker = loom_procs.worker(echo, "local")
    slow = [TaskMessage(parent_task_id="held", worker_type="echo", payload={"sleep": 2}) for _ in range(2)]
    held = await bus.subscribe_results("held")
    for t in slow:
        await bus.publish_task(t)
    await poll(lambda: router.metric("loom_tier_in_flight", tier="local") == 2, timeout=10)
    keys = draw(st.from_regex(r"\A[A-Za-z0-9_-]{1,20}\Z"), 20)
    results = st.fixed_dictionaries(
        {"task_id": st.sampled_from([t.task_id for t in slow]) | ids},
        optional={
            "token_usage": json_values
            | st.fixed_dictionaries({"prompt_tokens": json_values, "completion_tokens": json_values}),
            "status": st.sampled_from(["completed", "failed"]) | json_values,
        },
    )
    sent = bodies(results, results)
    for i, body in enumerate(sent):
        await bus.publish_raw(f"loom.results.{keys[i % len(keys)]}", body)
    await bus.nc.flush()
    sub = await bus.subscribe_results("after-fuzz")
    tasks = [TaskMessage(parent_task_id="after-fuzz", worker_type="echo") for _ in range(6)]
    for t in tasks:
        await bus.publish_task(t)
    got = [json.loads(await sub.get(timeout=30)) for _ in tasks]
    assert sorted(r["task_id"] for r in got) == sorted(t.task_id for t in tasks)
    real = [json.loads(await held.get(timeout=30)) for _ in slow]
    assert {r["task_id"] for r in real if r.get("worker_type") == "echo" and "output" in r} == {
        t.task_id for t in slow
    }
    await poll(lambda: router.metric("loom_tier_in_flight", tier="local") == 0, timeout=10)
    assert_alive([(router, "router"), (worker, "worker")])
