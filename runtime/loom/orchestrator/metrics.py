"""Prometheus metrics of the goal orchestrator (goal counts are shared with pipelines)."""

from __future__ import annotations

from loom.metrics import counter

SUBTASKS = counter(
    "loom_orchestrator_subtasks_total",
    "Subtasks ended, by status (completed, failed, timeout).",
    ["orchestrator", "status"],
)
REJECTED_SUBTASKS = counter(
    "loom_orchestrator_rejected_subtasks_total",
    "Planned subtasks dropped because their worker or payload was invalid after feedback.",
    ["orchestrator"],
)
CHECKPOINTS = counter(
    "loom_orchestrator_checkpoints_total",
    "Checkpoint writes: progress (after a result) or compaction (context passed the token threshold).",
    ["orchestrator", "kind"],
)
RESUMED_FROM_CHECKPOINT = counter(
    "loom_orchestrator_resumed_total",
    "Goals continued from a stored checkpoint after a restart.",
    ["orchestrator"],
)
