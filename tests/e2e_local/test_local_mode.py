"""Local mode end to end: the README's run flow with the real local model, and a worker killed mid-task."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from loom.api import load_paths
from loom.bus import Bus
from loom.llm.llama_settings import available_cores, server_count
from loom.messages import GoalMessage
from loom.settings import NatsSettings
from tests.e2e_local.conftest import LOOM, ROOT, SAMPLES, parse_submit_output, pid_alive, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

STAGES = {"extract", "classify", "summarise", "report"}


def output_schema(worker: str) -> dict[str, Any]:
    spec = next(r.spec for r in load_paths([SAMPLES]) if r.kind == "Worker" and r.name == worker)
    return dict(spec.output_schema)


async def run_goal(settings: NatsSettings, text: str, wait_seconds: float) -> dict[str, Any]:
    """Submit the sample goal with the bus client and wait for the goal's own result."""
    bus = await Bus.connect(settings)
    try:
        goal = GoalMessage(
            instruction="Analyse this document", pipeline="doc-analysis", context={"text": text}
        )
        sub = await bus.subscribe_results(goal.goal_id)
        await bus.publish_goal(goal)
        deadline = time.monotonic() + wait_seconds
        while True:
            doc = json.loads(await sub.get(timeout=max(0.1, deadline - time.monotonic())))
            if "task_id" not in doc:  # stage results share the subject; the goal result has no task_id
                return dict(doc)
    finally:
        await bus.close()


def assert_completed_report(goal: dict[str, Any]) -> None:
    """Every stage completed and the outputs meet the workers' output schemas."""
    assert goal.get("status") == "completed", json.dumps(goal, indent=2)[:3000]
    assert "task_id" not in goal, "got a stage's task result instead of the goal result"
    assert goal["pipeline"] == "doc-analysis"
    stages = {s["name"]: s for s in goal["stages"]}
    assert set(stages) == STAGES
    assert all(s["status"] == "completed" for s in stages.values()), stages
    report = goal["output"]["report"]
    jsonschema.validate(report, output_schema("report-assembler"))
    # The model stages' answers, as they reached the report, are within their schemas.
    jsonschema.validate({"category": report["category"]}, output_schema("doc-classifier"))
    jsonschema.validate(
        {"summary": report["summary"] or "-", "entities": report["entities"]}, output_schema("doc-summarizer")
    )
    assert report["title"] == "Incident report: payment outage at Northwind Traders"
    assert report["key_facts"]["emails"] == ["sre-team@northwind.example"]


def test_readme_run_flow_completes_every_stage_with_the_local_model(local_up_factory: Any) -> None:
    up = local_up_factory([SAMPLES])
    state = up.wait_ready()
    roles = sorted(p["role"] for p in state["processes"] if p["role"] != "llm")
    assert roles == ["nats", "pipeline", "router", "scheduler", "worker", "worker", "worker", "worker"]
    # The model: a server per stage the pipeline runs at once (up to the cores), behind a balancer.
    servers = server_count(os.environ, available_cores(), widest=2)
    llm = sorted(p["name"] for p in state["processes"] if p["role"] == "llm")
    expected = ["llm-local", *(f"llm-local-{i}" for i in range(servers))] if servers > 1 else ["llm-local"]
    assert llm == expected

    text = (SAMPLES / "example.txt").read_text(encoding="utf-8")
    done = subprocess.run(up.submit_cmd(text, 600), capture_output=True, text=True, cwd=ROOT, timeout=660)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-2000:]}\n{up.log()[-4000:]}"
    goal = parse_submit_output(done.stdout)
    assert_completed_report(goal)
    assert f"goal {goal['goal_id']} (completed)" in done.stdout  # the per-stage timeline

    status = subprocess.run(
        [*LOOM, "status", "--run-dir", str(up.run_dir), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["up"]["phase"] == "ready"
    assert {c["name"] for c in doc["consumers"]} >= {
        "worker-doc-classifier-local",
        "worker-doc-summarizer-local",
        "goals-doc-analysis",
        "router",
    }
    assert doc["dead_letters"] == 0
    # The sample EvalSuite ran once through the router, as its Job does on a cluster.
    wait_until(lambda: "EvalSuite doc-extractor-gate:" in up.log(), 120, "the sample suite reported")
    assert "loom up: EvalSuite doc-extractor-gate: passed" in up.log(), up.log()[-3000:]

    pids = [p["pid"] for p in up.state()["processes"]]
    assert up.stop() == 0
    final = up.state()
    assert final["phase"] == "stopped"
    assert all(p["state"] == "stopped" and p["restarts"] == 0 for p in final["processes"]), final["processes"]
    assert not any(pid_alive(pid) for pid in pids)


def test_killing_a_worker_mid_task_loses_nothing(local_up_factory: Any, tmp_path: Path) -> None:
    # Same samples with a shorter task timeout, so the unacknowledged task is redelivered in ~65s;
    # 60 s still leaves the real model room to finish the redelivered task on a loaded 2-core machine
    # (at 30 s it timed out there, and the pipeline's retry of the stage failed the assertion below).
    samples = tmp_path / "samples"
    shutil.copytree(SAMPLES, samples)
    # The hourly schedule would start a second goal if the run crossed the top of an hour.
    (samples / "schedule-hourly-status.yaml").unlink()
    path = samples / "worker-doc-summarizer.yaml"
    manifest = yaml.safe_load(path.read_text())
    manifest["spec"]["timeoutSeconds"] = 60
    path.write_text(yaml.safe_dump(manifest))
    # The stage's own timer must outlast the ack deadline plus the redelivered run, so the task the
    # killed worker held is finished by its redelivery, not overtaken by the pipeline's stage timer.
    pipeline_path = samples / "pipeline-doc-analysis.yaml"
    pipeline = yaml.safe_load(pipeline_path.read_text())
    pipeline["spec"]["timeoutSeconds"] = 900
    for stage in pipeline["spec"]["pipelineStages"]:
        if stage["name"] == "summarise":
            stage["timeoutSeconds"] = 800
    pipeline_path.write_text(yaml.safe_dump(pipeline))
    up = local_up_factory([samples], env={"LOOM_ACK_GRACE_SECONDS": "5"})
    up.wait_ready()
    victim = up.process("worker-doc-summarizer-local")

    text = (SAMPLES / "example.txt").read_text(encoding="utf-8")
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(asyncio.run, run_goal(up.nats_settings("e2e-local"), text, wait_seconds=900))

        def in_flight() -> bool:
            consumer = up.jsz_consumer("worker-doc-summarizer-local")
            return bool(consumer and consumer["num_ack_pending"] >= 1)

        wait_until(in_flight, 300, "the summariser to hold a task")
        os.kill(victim["pid"], signal.SIGKILL)
        wait_until(lambda: up.process("worker-doc-summarizer-local")["restarts"] >= 1, 30, "the restart")
        goal = pending.result(timeout=960)
    assert_completed_report(goal)
    restarted = up.process("worker-doc-summarizer-local")
    assert restarted["pid"] != victim["pid"] and pid_alive(restarted["pid"])
    assert restarted["last_exit_code"] == -signal.SIGKILL
    consumer = up.jsz_consumer("worker-doc-summarizer-local")
    assert consumer is not None and consumer["num_ack_pending"] == 0 and consumer["num_pending"] == 0
    # Nothing lost: JetStream redelivered the task the killed worker held, and the stage completed.
    # (Its timer outlasts the redelivery, so a second attempt can only follow a failed first one: the
    # 135M model breaking the output schema, or running past timeoutSeconds on a loaded machine.)
    summarise = next(s for s in goal["stages"] if s["name"] == "summarise")
    assert summarise["status"] == "completed" and summarise["attempts"] in (1, 2), summarise
    # One task per attempt; one more delivery than tasks is the redelivery of the killed worker's task.
    assert consumer["delivered"]["consumer_seq"] > summarise["attempts"], consumer
    assert up.stop() == 0


def test_make_run_is_the_readme_first_command(tmp_path: Path) -> None:
    """`make run` itself (this venv, a temp run dir): the goal report and timeline appear on screen."""
    venv = Path(os.environ.get("VIRTUAL_ENV") or Path(LOOM[0]).parent.parent)
    done = subprocess.run(
        ["make", "--no-print-directory", "run", f"VENV={venv}", f"RUN_DIR={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=1100,
    )
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    # Progress and results only: make does not echo its own shell recipe.
    assert "trap stop EXIT" not in done.stdout + done.stderr
    start = done.stdout.index("\n{\n") + 1
    goal = parse_submit_output(done.stdout[start:])
    assert_completed_report(goal)
    assert f"goal {goal['goal_id']} (completed)" in done.stdout
    for stage in STAGES:
        assert stage in done.stdout.split(f"goal {goal['goal_id']} (completed)", 1)[1]
