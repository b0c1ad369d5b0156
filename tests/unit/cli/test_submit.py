"""`loom submit --wait` must end on the answer to what it sent, not on a stage's result."""

from __future__ import annotations

from pathlib import Path

from loom.cli.commands.submit import _context, is_own_result
from loom.messages import GoalMessage, GoalResult, TaskMessage, TaskResult, TaskStatus


def test_a_goal_wait_skips_stage_results_on_the_goal_subject() -> None:
    goal = GoalMessage(instruction="x", pipeline="p")
    done = TaskStatus.COMPLETED
    stage = TaskResult(task_id="t1", parent_task_id=goal.goal_id, worker_type="w", status=done)
    final = GoalResult(goal_id=goal.goal_id, status=TaskStatus.COMPLETED)
    other = GoalResult(goal_id="someone-else", status=TaskStatus.COMPLETED)
    assert not is_own_result(stage.to_bytes(), goal)
    assert not is_own_result(other.to_bytes(), goal)
    assert not is_own_result(b"not json", goal)
    assert is_own_result(final.to_bytes(), goal)


def test_a_task_wait_matches_its_task_id() -> None:
    task = TaskMessage(worker_type="w")
    mine = TaskResult(task_id=task.task_id, worker_type="w", status=TaskStatus.FAILED)
    theirs = TaskResult(task_id="other", worker_type="w", status=TaskStatus.COMPLETED)
    assert is_own_result(mine.to_bytes(), task)
    assert not is_own_result(theirs.to_bytes(), task)


def test_context_reads_json_text_and_files(tmp_path: Path) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text("Hello {not json}", encoding="utf-8")
    ctx = _context(["n=3", "flag=true", "name=plain text", f"text=@{doc}"])
    assert ctx == {"n": 3, "flag": True, "name": "plain text", "text": "Hello {not json}"}


def test_a_goal_without_pipeline_goes_to_the_orchestrator_or_the_only_pipeline() -> None:
    import pytest

    from loom.cli.commands.submit import NoGoalTarget, goal_target

    assert goal_target(["loom.goals.incoming", "loom.goals.a"]) is None
    assert goal_target(["loom.goals.analysis"]) == "analysis"
    with pytest.raises(NoGoalTarget, match=r"pipelines: a, b\. Say which: .*--pipeline a"):
        goal_target(["loom.goals.b", "loom.goals.a"])
    with pytest.raises(NoGoalTarget, match="loom pipeline --config FILE"):
        goal_target([])


def test_submit_refuses_an_oversized_task_or_goal_up_front_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    big = tmp_path / "big.json"
    big.write_text('{"text": "' + "x" * 5000 + '"}')
    # An unreachable NATS: the refusal must come before any connection attempt.
    env = {"LOOM_NATS_URL": "nats://127.0.0.1:9", "LOOM_MAX_PAYLOAD_BYTES": "4096", "PATH": ""}
    cmd = [sys.executable, "-m", "loom.cli.main", "submit"]
    task = subprocess.run(
        [*cmd, "--worker-type", "w", "--payload", f"@{big}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert task.returncode == 2
    (line,) = task.stderr.strip().splitlines()
    assert line.startswith("loom submit: task message is ") and "over the limit of 4096 bytes" in line
    goal = subprocess.run(
        [*cmd, "summarize", "--context", f"doc=@{big}", "--max-payload-bytes", "2048"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert goal.returncode == 2 and "goal message is" in goal.stderr and "2048 bytes" in goal.stderr
    small = subprocess.run(
        [*cmd, "--worker-type", "w", "--connect-timeout", "0.5"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert small.returncode != 0 and "over the limit" not in small.stderr  # it fits: it tries to connect
