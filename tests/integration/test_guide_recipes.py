"""The original guide's recipes, as its users type them, through the real processes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from tests.support.processes import (
    LoomProcesses,
    bus,
    collect,
    echo_worker,
    loom_procs,
    poll,
    run_cli,
    write_yaml,
)

from loom.bus import Bus
from loom.messages import DeadLetterReason, TaskMessage
from loom.subjects import STREAM_TASKS

pytestmark = pytest.mark.integration
__all__ = ["bus", "loom_procs"]


async def test_four_terminal_recipe_reaches_the_only_pipeline(
    tmp_path: Path, loom_procs: LoomProcesses, nats_url: str
) -> None:
    # Terminal 4 before any pipeline ran: no silent wait, a message that says what to do
    early = await asyncio.to_thread(
        run_cli, "submit", "Extract entities", "--context", "text=x", nats_url=nats_url
    )
    assert early.returncode == 2 and "loom pipeline --config FILE" in early.stderr, early.stderr
    assert "Traceback" not in early.stderr

    echo = echo_worker(tmp_path, "entity_extractor")
    pipeline = write_yaml(
        tmp_path,
        "analysis_pipeline",
        {
            "name": "analysis_pipeline",
            "pipeline_stages": [
                {
                    "name": "extract",
                    "worker_type": "entity_extractor",
                    "input_mapping": {"text": "goal.context.text"},
                }
            ],
        },
    )
    loom_procs.router()  # terminal 1: no config at all
    loom_procs.worker(echo, "local")  # terminal 2
    loom_procs.spawn("pipeline", "--config", str(pipeline))  # terminal 3
    out = await asyncio.to_thread(
        run_cli,
        "submit",
        "Extract entities from this text",
        "--context",
        "text=The United Nations was founded in San Francisco in 1945.",
        "--wait",
        "--timeout",
        "60",
        nats_url=nats_url,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    assert "sending the goal to pipeline 'analysis_pipeline'" in out.stderr
    assert "San Francisco" in out.stdout


async def test_a_task_no_worker_serves_is_visible_then_dead_lettered(
    tmp_path: Path, loom_procs: LoomProcesses, bus: Bus
) -> None:
    echo = echo_worker(tmp_path, "echo")
    worker = loom_procs.worker(echo, "local")
    worker.terminate()  # echo/local has run once: its consumer stays, its tasks wait for it
    router = loom_procs.router(extra=("--no-worker-wait", "2"))  # no catalog: untiered tasks go to standard
    sub = await bus.subscribe_results("nw")
    ghost = TaskMessage(parent_task_id="nw", worker_type="ghost")
    waiting = TaskMessage(parent_task_id="nw", worker_type="echo", model_tier="local")
    await bus.publish_task(ghost)
    await bus.publish_task(waiting)
    await poll(lambda: router.metric("loom_router_tasks_without_worker") == 1, timeout=10)
    (result,) = await collect(sub, 1, timeout=20)
    assert result["task_id"] == ghost.task_id and result["error_code"] == "no_worker"
    assert "loom.tasks.ghost.standard" in result["error"]
    (dl,) = [d.dead_letter for d in await bus.dead_letters()]
    assert dl.reason == DeadLetterReason.NO_WORKER and dl.task_id == ghost.task_id
    assert json.loads(dl.original)["task_id"] == ghost.task_id
    await poll(lambda: router.metric("loom_router_tasks_without_worker") == 0, timeout=10)
    assert router.metric("loom_dead_letters_total", reason="no_worker") == 1
    assert await bus.stream_messages(STREAM_TASKS) == 1  # the echo task still waits for its worker
    await asyncio.sleep(2.5)
    assert len(await bus.dead_letters()) == 1
    loom_procs.worker(echo, "local")
    (done,) = await collect(sub, 1, timeout=20)
    assert done["task_id"] == waiting.task_id and done["status"] == "completed"
