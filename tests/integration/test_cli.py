"""The ``loom`` CLI as users run it: validate, submit (task and goal), JSON logs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from tests.support.processes import LoomProcesses, bus, echo_worker, loom_procs, run_cli, write_yaml

from loom.bus import Bus, Delivery
from loom.messages import GoalMessage, GoalResult, StageRecord, TaskStatus
from loom.subjects import STREAM_GOALS, goal_consumer

__all__ = ["bus", "loom_procs"]


def test_validate_prints_every_problem_in_every_file(tmp_path: Path) -> None:
    good = echo_worker(tmp_path, "fine")
    bad_worker = write_yaml(
        tmp_path,
        "bad-worker",
        {
            "name": "Bad Name",
            "worker_kind": "processor",
            "timeout_seconds": -1,
            "input_schema": {"type": "objekt"},
        },
    )
    bad_pipeline = write_yaml(
        tmp_path,
        "bad-pipeline",
        {
            "apiVersion": "loom.dev/v1alpha1",
            "kind": "Pipeline",
            "metadata": {"name": "p"},
            "spec": {
                "pipelineStages": [
                    {"name": "a", "workerType": "x", "inputMapping": {"t": "b.output.t"}},
                    {"name": "b", "workerType": "y", "inputMapping": {"t": "a.output.t"}},
                ]
            },
        },
    )
    bad_ref = write_yaml(
        tmp_path,
        "bad-ref",
        {
            "name": "refs",
            "system_prompt": "hi",
            "input_schema_ref": "no.such.Model",
        },
    )
    out = run_cli("validate", str(good), str(bad_worker), str(bad_pipeline), str(bad_ref))
    assert out.returncode == 1
    err = out.stderr
    assert f"{good}: OK (Worker/fine)" in out.stdout
    assert f"{bad_worker}: Worker.name: String should match pattern" in err
    assert (
        f"{bad_worker}: Worker.timeoutSeconds: Input should be greater than 0" in err
        or f"{bad_worker}: Worker.timeout_seconds: Input should be greater than 0" in err
    )
    assert "processor workers need processingBackend" in err
    assert "inputSchema: type: 'objekt' is not valid" in err
    assert f"{bad_pipeline}: Pipeline/p" in err and "dependency cycle among stages: a, b" in err
    assert f"{bad_ref}: Worker/refs: schema ref: cannot import module 'no.such'" in err
    assert "problems found" in err
    ok = run_cli("validate", str(good), str(tmp_path / "missing.yaml"))
    assert ok.returncode == 1 and "no such file" in ok.stderr
    assert run_cli("validate", str(good)).returncode == 0


def test_validate_router_config(tmp_path: Path) -> None:
    good = write_yaml(
        tmp_path,
        "router",
        {
            "policy": {"tierOverrides": {"echo": "local"}},
            "workers": {"echo": {"defaultModelTier": "local", "tiers": ["local"]}},
        },
    )
    bad = write_yaml(
        tmp_path, "router-bad", {"policy": {"tiers": [{"name": "local"}], "rateLimits": {"gold": {}}}}
    )
    out = run_cli("validate", str(good), str(bad))
    assert out.returncode == 1
    assert "RouterConfig (1 worker types)" in out.stdout
    assert "rateLimits.gold: unknown tier" in out.stderr


@pytest.mark.integration
async def test_submit_task_and_wait(tmp_path: Path, loom_procs: LoomProcesses, nats_url: str) -> None:
    cfg = echo_worker(tmp_path)
    loom_procs.router(cfg)
    loom_procs.worker(cfg)
    out = await asyncio.to_thread(
        run_cli,
        "submit",
        "--worker-type",
        "echo",
        "--payload",
        '{"q": 42}',
        "--priority",
        "high",
        "--wait",
        "--timeout",
        "20",
        nats_url=nats_url,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["status"] == "completed" and result["output"]["echo"] == {"q": 42}
    failed = await asyncio.to_thread(
        run_cli, "submit", "--worker-type", "ghost", "--wait", "--timeout", "20", nats_url=nats_url
    )
    assert failed.returncode == 1 and '"unknown_worker_type"' in failed.stdout
    bad = run_cli("submit", "--worker-type", "echo", "--payload", "[1]", nats_url=nats_url)
    assert bad.returncode == 2 and "--payload must be a JSON object" in bad.stderr


@pytest.mark.integration
async def test_submit_goal_prints_stage_timeline(bus: Bus, nats_url: str) -> None:
    """A stand-in pipeline consumes the goal and answers with a GoalResult carrying stages."""
    durable = await bus.ensure_goal_consumer("report", ack_wait=10, max_deliver=3, max_ack_pending=10)
    assert durable == goal_consumer("report")
    stop = asyncio.Event()
    received: list[GoalMessage] = []

    async def pipeline(d: Delivery) -> None:
        goal = GoalMessage.from_bytes(d.data)
        received.append(goal)
        await bus.publish_result(
            GoalResult(
                goal_id=goal.goal_id,
                status=TaskStatus.COMPLETED,
                pipeline="report",
                output={"ok": 1},
                stages=[
                    StageRecord(
                        name="extract",
                        worker_type="extractor",
                        status="completed",
                        duration_ms=12.5,
                        attempts=1,
                    ),
                    StageRecord(
                        name="summarize", worker_type="summarizer", status="failed", attempts=2, error="boom"
                    ),
                ],
            )
        )
        await d.ack()
        stop.set()

    consumer = asyncio.create_task(
        bus.consume(STREAM_GOALS, durable, pipeline, max_in_flight=1, batch=1, stop=stop)
    )
    out = await asyncio.to_thread(
        run_cli,
        "submit",
        "Summarise the report",
        "--pipeline",
        "report",
        "--context",
        "doc=a.pdf",
        "--context",
        "pages=3",
        "--wait",
        "--timeout",
        "20",
        nats_url=nats_url,
    )
    await asyncio.wait_for(consumer, 10)
    assert out.returncode == 0, out.stderr
    assert received[0].context == {"doc": "a.pdf", "pages": 3}
    assert (
        "extract" in out.stdout
        and "summarizer" in out.stdout
        and "boom" in out.stdout
        and "12.5" in out.stdout
    )


@pytest.mark.integration
def test_log_json_lines(tmp_path: Path, nats_url: str) -> None:
    out = run_cli(
        "worker",
        "--config",
        str(echo_worker(tmp_path, backend_config={"nope": 1})),
        "--log-json",
        nats_url=nats_url,
    )
    assert out.returncode == 2
    assert "cannot build loom.contrib.noop.EchoBackend with backend_config ['nope']" in out.stderr
