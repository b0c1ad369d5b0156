"""Pipelines through the real system: ``loom router``, ``loom worker`` and ``loom pipeline`` processes.

The other pipeline tests answer stage tasks in-process; these send every stage
task through the router to processor workers, as a deployment does, and count
the work each stage really did from a file the workers' backend appends to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.support.backends import read_calls, starts
from tests.support.pipelines import submit, wait_goal_result
from tests.support.processes import LoomProcess, LoomProcesses, bus, loom_procs, poll, write_yaml

from loom.bus import Bus
from loom.messages import GoalMessage, TaskStatus

pytestmark = pytest.mark.integration
__all__ = ["bus", "loom_procs"]

REPO = str(Path(__file__).resolve().parents[2])
BACKEND = "tests.support.backends.RecordingBackend"


def worker(tmp: Path, name: str, calls: Path, **fields: Any) -> Path:
    """A processor Worker whose backend records every call to ``calls``."""
    doc: dict[str, Any] = {
        "name": name,
        "worker_kind": "processor",
        "processing_backend": BACKEND,
        "backend_config": {"calls_file": str(calls), "tag": name},
        "default_model_tier": "local",
        **fields,
    }
    return write_yaml(tmp, f"worker-{name}", doc)


def start_system(
    procs: LoomProcesses, workers: list[Path], pipeline: Path, *pipeline_args: str
) -> LoomProcess:
    """Router, workers and one pipeline process, started together; returns the router."""
    env = {"PYTHONPATH": REPO}  # the workers import the recording backend from tests/
    started = [procs.spawn("router", "--config", *map(str, workers), ready=False)]
    started += [procs.spawn("worker", "--config", str(w), env=env, ready=False) for w in workers]
    started.append(procs.spawn("pipeline", "--config", str(pipeline), *pipeline_args, ready=False))
    for p in started:
        p.wait_ready()
    return started[0]


async def test_fan_out_and_join_complete_through_the_router(
    tmp_path: Path, loom_procs: LoomProcesses, bus: Bus
) -> None:
    calls = tmp_path / "calls.jsonl"
    workers = [
        worker(tmp_path, "extractor", calls),
        worker(tmp_path, "analyzer", calls, max_in_flight=4),
        worker(tmp_path, "joiner", calls),
    ]
    side = {"text": "extract.output.in.doc", "sleep": "goal.context.pause"}
    pipeline = write_yaml(
        tmp_path,
        "review",
        {
            "name": "review",
            "pipeline_stages": [
                {"name": "extract", "worker_type": "extractor", "input_mapping": {"doc": "goal.context.doc"}},
                {
                    "name": "left",
                    "worker_type": "analyzer",
                    "input_mapping": {**side, "side": "goal.context.left"},
                },
                {
                    "name": "right",
                    "worker_type": "analyzer",
                    "input_mapping": {**side, "side": "goal.context.right"},
                },
                {
                    "name": "join",
                    "worker_type": "joiner",
                    "input_mapping": {"left": "left.output.in.side", "right": "right.output.in.side"},
                },
            ],
        },
    )
    router = start_system(loom_procs, workers, pipeline)
    goal = GoalMessage(pipeline="review", context={"doc": "d1", "left": "L", "right": "R", "pause": 0.4})
    result = await submit(bus, goal, within=60)

    assert result.status == TaskStatus.COMPLETED, result.error
    assert result.output is not None
    assert result.output["join"] == {"by": "joiner", "in": {"left": "L", "right": "R"}}
    assert result.output["left"]["in"] == {"text": "d1", "side": "L", "sleep": 0.4}
    # The timeline: both branches start after extract ends and overlap; join starts after both end.
    stages = {s.name: s for s in result.stages}
    assert [s.name for s in result.stages] == ["extract", "left", "right", "join"]
    assert all(s.status == "completed" and s.attempts == 1 for s in result.stages)
    times = {n: (s.started_at, s.finished_at) for n, s in stages.items()}
    assert all(a is not None and b is not None for a, b in times.values())
    extract_end = stages["extract"].finished_at
    left, right, join = stages["left"], stages["right"], stages["join"]
    assert extract_end is not None and left.started_at is not None and right.started_at is not None
    assert left.finished_at is not None and right.finished_at is not None and join.started_at is not None
    assert min(left.started_at, right.started_at) >= extract_end
    assert max(left.started_at, right.started_at) < min(left.finished_at, right.finished_at)
    assert join.started_at >= max(left.finished_at, right.finished_at)
    # The work itself ran once per stage, and the two branches ran at the same time in the worker.
    assert [c["tag"] for c in starts(calls)].count("analyzer") == 2
    assert len(starts(calls)) == 4
    branch_starts = starts(calls, "analyzer")
    assert {c["payload"]["side"] for c in branch_starts} == {"L", "R"}
    branch_ends = [c["t"] for c in read_calls(calls) if c["event"] == "end" and c["tag"] == "analyzer"]
    assert max(c["t"] for c in branch_starts) < min(branch_ends)
    # Every stage task went through the router.
    assert router.metric("loom_router_routed_total") == 4
    assert router.metric("loom_router_routed_total", worker_type="analyzer", tier="local") == 2


async def test_an_output_that_breaks_the_schema_fails_the_goal_with_the_validation_error(
    tmp_path: Path, loom_procs: LoomProcesses, bus: Bus
) -> None:
    calls = tmp_path / "calls.jsonl"
    schema = {
        "type": "object",
        "required": ["summary"],
        "properties": {"summary": {"type": "string"}},
    }
    workers = [
        worker(tmp_path, "extractor", calls),
        worker(tmp_path, "reporter", calls, output_schema=schema, max_deliver=2, retry_backoff_seconds=[0.1]),
    ]
    pipeline = write_yaml(
        tmp_path,
        "report",
        {
            "name": "report",
            "pipeline_stages": [
                {"name": "extract", "worker_type": "extractor", "input_mapping": {"doc": "goal.context.doc"}},
                {
                    "name": "report",
                    "worker_type": "reporter",
                    "input_mapping": {"output": "goal.context.report", "after": "extract.output.by"},
                },
            ],
        },
    )
    start_system(loom_procs, workers, pipeline)
    good = await submit(
        bus, GoalMessage(pipeline="report", context={"doc": "d", "report": {"summary": "ok"}})
    )
    bad = await submit(bus, GoalMessage(pipeline="report", context={"doc": "d", "report": {"summary": 42}}))

    assert good.status == TaskStatus.COMPLETED, good.error
    assert good.output is not None and good.output["report"] == {"summary": "ok"}
    assert bad.status == TaskStatus.FAILED
    assert bad.error is not None
    assert "stage 'report' failed" in bad.error and "invalid_output" in bad.error
    assert "summary: 42 is not of type 'string'" in bad.error
    records = {s.name: s for s in bad.stages}
    assert records["extract"].status == "completed" and records["report"].status == "failed"
    # A broken output is final: the worker did not retry it (max_deliver 2), nor did the pipeline.
    assert records["report"].attempts == 1
    assert len(starts(calls, "reporter")) == 1 + 1


def _stage(call: dict[str, Any]) -> str:
    (name,) = {"first", "second", "third"} & set(call["payload"])
    return name


async def test_a_killed_pipeline_is_replaced_without_rerunning_finished_stages(
    tmp_path: Path, loom_procs: LoomProcesses, bus: Bus
) -> None:
    calls = tmp_path / "calls.jsonl"
    gate = tmp_path / "release-second"
    workers = [worker(tmp_path, "step", calls, max_in_flight=4)]
    pipeline = write_yaml(
        tmp_path,
        "resume",
        {
            "name": "resume",
            "pipeline_stages": [
                {"name": "first", "worker_type": "step", "input_mapping": {"first": "goal.context.x"}},
                {
                    "name": "second",
                    "worker_type": "step",
                    "timeout_seconds": 60,
                    "input_mapping": {"second": "first.output.by", "wait_for": "goal.context.gate"},
                },
                {
                    "name": "third",
                    "worker_type": "step",
                    "input_mapping": {"third": "second.output.in.second"},
                },
            ],
        },
    )
    args = ("--ack-wait", "1.5")
    start_system(loom_procs, workers, pipeline, *args)
    (first_pipeline,) = [p for p in loom_procs.procs if p.args[0] == "pipeline"]
    goal = GoalMessage(pipeline="resume", context={"x": 1, "gate": str(gate)})
    sub = await bus.subscribe_results(goal.goal_id)
    await bus.publish_goal(goal)

    # Stage one is done and stage two is running in the worker: the pipeline process dies.
    await poll(lambda: [_stage(c) for c in starts(calls)] == ["first", "second"])
    first_pipeline.kill()
    second_pipeline = loom_procs.spawn("pipeline", "--config", str(pipeline), *args)
    await poll(lambda: second_pipeline.metric("loom_goals_resumed_total", pipeline="resume") == 1)
    gate.touch()  # stage two answers now, to the process that took the goal over
    result = await wait_goal_result(sub, 60)
    await sub.close()

    assert result.status == TaskStatus.COMPLETED, result.error
    assert result.output is not None and result.output["third"]["in"] == {"third": "step"}
    assert {s.name: s.attempts for s in result.stages} == {"first": 1, "second": 1, "third": 1}
    assert sorted(_stage(c) for c in starts(calls)) == ["first", "second", "third"]  # nothing ran twice
    assert second_pipeline.terminate() == 0, second_pipeline.log()
