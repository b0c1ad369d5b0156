"""What a pipeline goal does next, decided from the spec and what has happened so far. Pure.

A stage becomes *ready* once every stage it depends on is terminal (completed,
skipped, failed or timed out); ready stages start together, so independent
stages run concurrently (the execution levels of ``loom.api.pipeline`` are the
coarse view of the same graph). A ready stage is gated: its condition must hold
(a missing path is false, so the stage is skipped), and every input mapping must
resolve. A mapping that reads a stage which was skipped skips this stage too;
a mapping that reads a completed stage's output and finds nothing fails it
(the two stages disagree about their contract).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from loom.api.pipeline import (
    PipelineSpec,
    Stage,
    evaluate_condition,
    execution_levels,
    mapping_source_stage,
    resolve_path,
    stage_dependencies,
)

StageStatus = Literal["pending", "running", "completed", "skipped", "failed", "timeout"]
TERMINAL: frozenset[str] = frozenset({"completed", "skipped", "failed", "timeout"})


@dataclass(frozen=True)
class Gate:
    """The verdict on a ready stage: run it with ``payload``, or skip/fail it with ``reason``."""

    action: Literal["run", "skip", "fail"]
    payload: dict[str, Any] | None = None
    reason: str = ""


class PipelinePlan:
    """The stage graph of one pipeline, precomputed once per process."""

    def __init__(self, spec: PipelineSpec):
        self.spec = spec
        self.name = spec.pipeline_name
        self.stages: dict[str, Stage] = {s.name: s for s in spec.pipeline_stages}
        self.order: list[str] = [s.name for s in spec.pipeline_stages]
        self.dependencies: dict[str, frozenset[str]] = {
            name: frozenset(deps) for name, deps in stage_dependencies(spec).items()
        }
        self.levels: list[list[str]] = execution_levels(spec)

    def ready(self, statuses: dict[str, str]) -> list[str]:
        """Pending stages whose dependencies are all terminal, in declaration order."""
        return [
            name
            for name in self.order
            if statuses.get(name, "pending") == "pending"
            and all(statuses.get(d, "pending") in TERMINAL for d in self.dependencies[name])
        ]

    def gate(
        self, name: str, goal: dict[str, Any], outputs: dict[str, Any], statuses: dict[str, str]
    ) -> Gate:
        """Decide whether a ready stage runs, and with what payload."""
        stage = self.stages[name]
        if stage.condition is not None and not evaluate_condition(stage.condition, goal, outputs):
            return Gate("skip", reason=f"condition {stage.condition!r} is false")
        payload: dict[str, Any] = {}
        for key, path in stage.input_mapping.items():
            found, value = resolve_path(path, goal, outputs)
            if found:
                payload[key] = value
                continue
            source = mapping_source_stage(path)
            if source is not None and statuses.get(source) != "completed":
                return Gate(
                    "skip", reason=f"input {key!r} reads stage {source!r}, which {statuses.get(source)}"
                )
            if source is None:
                return Gate("fail", reason=f"input {key!r}: goal has no {path!r}")
            return Gate("fail", reason=f"input {key!r}: stage {source!r} output has no {path!r}")
        return Gate("run", payload=payload)


def stage_task_id(goal_id: str, stage: str, attempt: int) -> str:
    """The task id of one attempt of one stage: the same after a restart, so results still match."""
    return f"{goal_id}.{stage}.{attempt}"


def stage_msg_id(goal_id: str, stage: str, attempt: int) -> str:
    """The ``Nats-Msg-Id`` of one attempt: a re-publish after a restart is dropped as a duplicate."""
    return f"{goal_id}/{stage}/{attempt}"


def parse_stage_task_id(goal_id: str, task_id: str) -> tuple[str, int] | None:
    """(stage, attempt) from a stage task id of this goal, or None when it is not one."""
    prefix = goal_id + "."
    if not task_id.startswith(prefix):
        return None
    stage, sep, attempt = task_id[len(prefix) :].rpartition(".")
    if not sep or not attempt.isdigit():
        return None
    return stage, int(attempt)
