"""Stage readiness, gates, attempts and the result timeline, without a bus."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from loom.api.pipeline import PipelineSpec
from loom.messages import GoalMessage, TaskStatus, TokenUsage
from loom.pipeline.plan import PipelinePlan, parse_stage_task_id, stage_msg_id, stage_task_id
from loom.pipeline.state import GoalState


def pipeline(**kw: Any) -> PipelineSpec:
    base: dict[str, Any] = {
        "name": "docs",
        "pipeline_stages": [
            {"name": "extract", "worker_type": "extractor", "input_mapping": {"file": "goal.context.file"}},
            {
                "name": "classify",
                "worker_type": "classifier",
                "input_mapping": {"text": "extract.output.text"},
            },
            {
                "name": "summarize",
                "worker_type": "summarizer",
                "input_mapping": {"text": "extract.output.text"},
            },
            {
                "name": "ocr",
                "worker_type": "ocr",
                "condition": "extract.output.needs_ocr == true",
                "input_mapping": {"file": "goal.context.file"},
                "retries": 1,
            },
            {
                "name": "report",
                "worker_type": "reporter",
                "input_mapping": {"label": "classify.output.label", "scan": "ocr.output.text"},
            },
        ],
    }
    return PipelineSpec.model_validate(base | kw)


def goal(**context: Any) -> GoalMessage:
    return GoalMessage(goal_id="g1", context=context, pipeline="docs")


def test_levels_and_readiness() -> None:
    plan = PipelinePlan(pipeline())
    assert plan.levels == [["extract"], ["classify", "summarize", "ocr"], ["report"]]
    assert plan.ready({}) == ["extract"]
    statuses = {"extract": "completed"}
    assert plan.ready(statuses) == ["classify", "summarize", "ocr"]
    statuses |= {"classify": "completed", "summarize": "running", "ocr": "skipped"}
    assert plan.ready(statuses) == ["report"]


def test_reserved_and_invalid_names_rejected() -> None:
    with pytest.raises(ValidationError, match="reserved"):
        pipeline(name="incoming")
    with pytest.raises(ValidationError, match="cycle"):
        PipelineSpec.model_validate(
            {
                "name": "c",
                "pipeline_stages": [
                    {"name": "a", "worker_type": "w", "input_mapping": {"x": "b.output.x"}},
                    {"name": "b", "worker_type": "w", "input_mapping": {"x": "a.output.x"}},
                ],
            }
        )


def test_gate_builds_payload_and_evaluates_conditions() -> None:
    plan = PipelinePlan(pipeline())
    g = goal(file="a.pdf").model_dump(mode="json")
    assert plan.gate("extract", g, {}, {}).payload == {"file": "a.pdf"}
    outputs: dict[str, Any] = {"extract": {"text": "hello", "needs_ocr": False}}
    statuses = {"extract": "completed"}
    assert plan.gate("classify", g, outputs, statuses).payload == {"text": "hello"}
    skip = plan.gate("ocr", g, outputs, statuses)
    assert skip.action == "skip" and "false" in skip.reason
    outputs["extract"]["needs_ocr"] = True
    assert plan.gate("ocr", g, outputs, statuses).action == "run"
    # A missing condition path skips (the original's semantics).
    del outputs["extract"]["needs_ocr"]
    assert plan.gate("ocr", g, outputs, statuses).action == "skip"


def test_gate_skips_after_a_skipped_source_and_fails_on_a_broken_contract() -> None:
    plan = PipelinePlan(pipeline())
    g = goal(file="a.pdf").model_dump(mode="json")
    outputs: dict[str, Any] = {"extract": {"text": "t"}, "classify": {"label": "x"}}
    statuses = {"extract": "completed", "classify": "completed", "summarize": "completed", "ocr": "skipped"}
    gate = plan.gate("report", g, outputs, statuses)
    assert gate.action == "skip" and "'ocr'" in gate.reason
    outputs["ocr"] = {}
    statuses["ocr"] = "completed"
    broken = plan.gate("report", g, outputs, statuses)
    assert broken.action == "fail" and "ocr.output.text" in broken.reason
    missing_goal = plan.gate("extract", goal().model_dump(mode="json"), {}, {})
    assert missing_goal.action == "fail" and "goal.context.file" in missing_goal.reason


def test_attempts_retries_and_resume() -> None:
    plan = PipelinePlan(pipeline())
    st = GoalState.new(plan, goal(file="f"), now=100.0)
    assert st.start_attempt("ocr", 101.0) == 1
    assert st.deadlines(plan) == {"ocr": 101.0 + 60}
    assert st.attempt_failed(plan, "ocr", "boom", 102.0) is True  # retries=1
    assert st.start_attempt("ocr", 102.0) == 2
    # A restart while attempt 2 is in flight: it is re-published and gets a free extra attempt.
    assert st.resume(150.0) == ["ocr"]
    assert st.deadlines(plan) == {"ocr": 150.0 + 60}
    assert st.attempt_failed(plan, "ocr", "late", 210.0, timed_out=True) is True
    assert st.start_attempt("ocr", 210.0) == 3
    assert st.attempt_failed(plan, "ocr", "late", 270.0, timed_out=True) is False
    assert st.stages["ocr"].status == "timeout"
    # A non-retryable failure ends the stage at once.
    st.start_attempt("extract", 100.0)
    assert st.attempt_failed(plan, "extract", "bad input", 101.0, retryable=False) is False
    assert st.stages["extract"].status == "failed"


def test_finish_builds_timeline_and_round_trips() -> None:
    plan = PipelinePlan(pipeline())
    st = GoalState.new(plan, goal(file="f"), now=100.0)
    st.start_attempt("extract", 100.0)
    st.complete("extract", {"text": "t"}, 100.5)
    st.skip("ocr", "condition false", 100.5)
    for name in ("classify", "summarize"):
        st.start_attempt(name, 100.5)
        st.complete(name, {"label": "x"}, 101.0)
    st.start_attempt("report", 101.0)
    st.complete("report", {"done": True}, 101.25)
    assert st.all_terminal()
    result = st.finish(101.25)
    assert result.status == TaskStatus.COMPLETED
    assert result.output == {
        "extract": {"text": "t"},
        "classify": {"label": "x"},
        "summarize": {"label": "x"},
        "report": {"done": True},
    }
    by_name = {r.name: r for r in result.stages}
    assert by_name["extract"].duration_ms == pytest.approx(500.0)
    assert by_name["ocr"].status == "skipped"
    assert result.processing_time_ms == pytest.approx(1250.0)
    again = GoalState.from_bytes(st.to_bytes())
    assert again.status == "finished"
    stored = again.stored_result()
    assert stored is not None and stored.stages == result.stages


def test_a_failed_stage_fails_the_goal_and_cancels_the_rest() -> None:
    plan = PipelinePlan(pipeline())
    st = GoalState.new(plan, goal(file="f"), now=0.0)
    st.start_attempt("extract", 0.0)
    st.attempt_failed(plan, "extract", "worker crashed", 1.0)
    result = st.finish(1.0)
    assert result.status == TaskStatus.FAILED
    assert result.error is not None and "extract" in result.error and "worker crashed" in result.error
    assert {r.name: r.status for r in result.stages}["report"] == "cancelled"


def test_stage_task_ids_round_trip() -> None:
    tid = stage_task_id("g-1", "sum_up", 3)
    assert parse_stage_task_id("g-1", tid) == ("sum_up", 3)
    assert parse_stage_task_id("g-2", tid) is None
    assert parse_stage_task_id("g-1", "g-1.nope") is None
    assert stage_msg_id("g-1", "sum_up", 3) == "g-1/sum_up/3"


def test_goal_usage_sums_the_stages_cached_input_apart() -> None:
    plan = PipelinePlan(pipeline())
    st = GoalState.new(plan, goal(file="f"), now=0.0)
    st.start_attempt("extract", 0.0)
    st.complete(
        "extract",
        {"text": "t"},
        1.0,
        usage=TokenUsage(prompt_tokens=2100, completion_tokens=9, cache_write_tokens=0),
    )
    for name in ("classify", "summarize"):
        st.start_attempt(name, 1.0)
        st.complete(
            name,
            {"label": "x"},
            2.0,
            usage=TokenUsage(
                prompt_tokens=20, completion_tokens=5, cache_read_tokens=2000, cache_write_tokens=30
            ),
        )
    st.skip("ocr", "condition false", 1.0)
    st.start_attempt("report", 2.0)
    st.complete("report", {"done": True}, 3.0)
    usage = st.finish(3.0).token_usage
    assert usage == TokenUsage(
        prompt_tokens=2140, completion_tokens=19, cache_read_tokens=4000, cache_write_tokens=60
    )
    again = GoalState.from_bytes(st.to_bytes()).stored_result()
    assert again is not None and again.token_usage == usage
