"""Prometheus metrics of the goal-running roles (pipeline and goal orchestrator).

``pipeline`` is the pipeline name, or the orchestrator's name for goals it decomposes.
"""

from __future__ import annotations

from loom.metrics import counter, gauge, histogram

GOAL_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
STAGE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

GOALS_RECEIVED = counter(
    "loom_goals_received_total", "Goals taken up (a redelivery counts again).", ["pipeline"]
)
GOALS_COMPLETED = counter(
    "loom_goals_completed_total", "Goals finished, by outcome (completed or failed).", ["pipeline", "outcome"]
)
GOALS_RESUMED = counter(
    "loom_goals_resumed_total", "Goals picked up again from stored state after a restart.", ["pipeline"]
)
GOALS_REPLAYED = counter(
    "loom_goals_replayed_total", "Goals already finished whose stored result was sent again.", ["pipeline"]
)
GOALS_IN_FLIGHT = gauge("loom_goals_in_flight", "Goals this process is working on.", ["pipeline"])
GOAL_DURATION = histogram(
    "loom_goal_duration_seconds", "Time from a goal's first start to its result.", ["pipeline"], GOAL_BUCKETS
)
STAGE_DURATION = histogram(
    "loom_pipeline_stage_duration_seconds",
    "Time from a stage's first dispatch to its end.",
    ["pipeline", "stage"],
    STAGE_BUCKETS,
)
STAGES_FINISHED = counter(
    "loom_pipeline_stages_total",
    "Stages ended, by status (completed, skipped, failed, timeout, cancelled).",
    ["pipeline", "stage", "status"],
)
STAGE_RETRIES = counter(
    "loom_pipeline_stage_retries_total",
    "Stage attempts started after a failure or timeout.",
    ["pipeline", "stage"],
)
