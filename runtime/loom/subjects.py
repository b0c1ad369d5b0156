"""NATS subject, stream and consumer names — the original Loom's subjects, made durable.

Subjects:
  loom.tasks.incoming              router input        (stream LOOM_INCOMING, work queue)
  loom.tasks.<worker_type>.<tier>  worker input        (stream LOOM_TASKS, work queue)
  loom.tasks.dead_letter           dead letters        (stream LOOM_DEAD_LETTER, kept)
  loom.goals.incoming              orchestrator input  (stream LOOM_GOALS, work queue)
  loom.goals.<pipeline>            pipeline input      (stream LOOM_GOALS, work queue)
  loom.results.<id>                results             (core NATS; callers subscribe before publishing)
"""

from __future__ import annotations

import re

TASKS_INCOMING = "loom.tasks.incoming"
DEAD_LETTER = "loom.tasks.dead_letter"
GOALS_INCOMING = "loom.goals.incoming"
RESULTS_PREFIX = "loom.results"

STREAM_INCOMING = "LOOM_INCOMING"
STREAM_TASKS = "LOOM_TASKS"
STREAM_DEAD_LETTER = "LOOM_DEAD_LETTER"
STREAM_GOALS = "LOOM_GOALS"

#: The router's one shared durable consumer: N replicas never route a task twice.
ROUTER_CONSUMER = "router"

_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


def _token(value: str, what: str) -> str:
    if not _TOKEN.match(value):
        raise ValueError(f"{what} {value!r} is not a valid subject token (letters, digits, _ and - only)")
    return value


def task_subject(worker_type: str, tier: str) -> str:
    """Where the router sends tasks for a worker type on a tier."""
    return f"loom.tasks.{_token(worker_type, 'worker type')}.{_token(tier, 'tier')}"


def worker_consumer(worker_type: str, tier: str) -> str:
    """The durable pull consumer shared by all replicas of one (worker type, tier)."""
    return f"worker-{_token(worker_type, 'worker type')}-{_token(tier, 'tier')}"


def goal_subject(pipeline: str | None) -> str:
    """Goals for a pipeline, or for the dynamic orchestrator when ``pipeline`` is None."""
    return f"loom.goals.{_token(pipeline, 'pipeline')}" if pipeline else GOALS_INCOMING


def goal_consumer(pipeline: str | None) -> str:
    """The durable consumer shared by all replicas of one pipeline (or the orchestrator)."""
    return f"goals-{_token(pipeline, 'pipeline')}" if pipeline else "goals-orchestrator"


def result_subject(result_key: str) -> str:
    """Where results for a task or goal id are published."""
    return f"{RESULTS_PREFIX}.{_token(result_key, 'result id')}"
