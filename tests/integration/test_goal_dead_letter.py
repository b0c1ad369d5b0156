"""A goal that keeps crashing its pipeline ends as a ``max_deliveries`` dead letter, and can be replayed."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.pipelines import wait_goal_result
from tests.support.processes import (
    LoomProcesses,
    bus,
    consumer_empty,
    echo_worker,
    loom_procs,
    poll,
    write_yaml,
)

from loom.bus import Bus, StoredDeadLetter
from loom.dead_letters import decode_original
from loom.messages import DeadLetterReason, GoalMessage, TaskStatus
from loom.subjects import STREAM_GOALS, goal_consumer, goal_subject

pytestmark = pytest.mark.integration
__all__ = ["bus", "loom_procs"]


async def _goal_dead_letters(b: Bus) -> list[StoredDeadLetter]:
    return [d for d in await b.dead_letters() if d.dead_letter.goal_id is not None]


async def test_a_goal_that_keeps_crashing_its_pipeline_is_dead_lettered(
    tmp_path: Path, loom_procs: LoomProcesses, bus: Bus
) -> None:
    worker = echo_worker(tmp_path, "holder")
    pipeline = write_yaml(
        tmp_path,
        "fragile",
        {
            "name": "fragile",
            "pipeline_stages": [
                {"name": "hold", "worker_type": "holder", "input_mapping": {"doc": "goal.context.doc"}}
            ],
        },
    )
    router = loom_procs.router(worker)
    args = ("pipeline", "--config", str(pipeline), "--ack-wait", "1", "--max-deliver", "2")
    goal = GoalMessage(pipeline="fragile", context={"doc": "d1"}, tenant="acme", request_id="r-1")
    sub = await bus.subscribe_results(goal.goal_id, "acme")  # tenant acme's own result subject
    await bus.publish_goal(goal)

    # No worker serves the stage yet, so the goal stays in flight; its pipeline dies twice holding it.
    first = loom_procs.spawn(*args)
    await poll(lambda: first.metric("loom_goals_in_flight", pipeline="fragile") == 1)
    first.kill()
    second = loom_procs.spawn(*args)
    await poll(lambda: second.metric("loom_goals_resumed_total", pipeline="fragile") == 1)
    second.kill()

    result = await wait_goal_result(sub, 30)
    assert result.goal_id == goal.goal_id and result.status == TaskStatus.FAILED
    assert result.error is not None and result.error.startswith("max_deliveries:")
    assert result.pipeline == "fragile" and result.tenant == "acme" and result.request_id == "r-1"

    await poll(lambda: _goal_dead_letters(bus))
    (stored,) = await _goal_dead_letters(bus)
    dl = stored.dead_letter
    assert dl.reason == DeadLetterReason.MAX_DELIVERIES
    assert dl.goal_id == goal.goal_id and dl.tenant == "acme" and dl.deliveries == 2
    assert dl.subject == goal_subject("fragile", "acme")
    assert GoalMessage.from_bytes(decode_original(dl.original)) == goal  # the original goal, unchanged
    # Removed from the work queue after the dead letter and the result: no pipeline will take it up again.
    await poll(lambda: consumer_empty(bus, STREAM_GOALS, goal_consumer("fragile")))
    await poll(lambda: router.metric("loom_dead_letters_total", reason="max_deliveries") == 1)

    # Once the cause is fixed, the replayed goal resumes from its stored state and completes.
    third = loom_procs.spawn(*args)
    await bus.replay_dead_letter(stored)
    await poll(lambda: third.metric("loom_goals_resumed_total", pipeline="fragile") == 1)
    loom_procs.worker(worker)
    done = await wait_goal_result(sub, 60)
    await sub.close()
    assert done.status == TaskStatus.COMPLETED, done.error
    assert done.output is not None and done.output["hold"]["echo"] == {"doc": "d1"}
    assert await _goal_dead_letters(bus) == []
