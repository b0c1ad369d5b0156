"""The audit trail through the real system: a router and worker processes write one record per
task outcome to the JetStream audit stream; the records survive a NATS restart and ``loom audit``
filters and exports them."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from tests.support.nats_server import NatsServer
from tests.support.processes import LoomProcesses, bus, collect, echo_worker, loom_procs, poll, run_cli

from loom import tracing
from loom.bus import Bus
from loom.messages import DeadLetterReason, TaskMessage
from loom.subjects import STREAM_AUDIT

pytestmark = pytest.mark.integration
__all__ = ["bus", "loom_procs"]


def _policy(tmp: Path) -> Path:
    """Tier ``limited`` admits one task a minute and lets a second wait 0.5 s before dead-lettering it."""
    path = tmp / "policy.yaml"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "loom.dev/v1alpha1",
                "kind": "RouterPolicy",
                "metadata": {"name": "default"},
                "spec": {
                    "tiers": [{"name": "local"}, {"name": "limited"}],
                    "rateLimits": {"limited": {"requestsPerMinute": 1}},
                    "onLimit": {"maxWaitSeconds": 0.5},
                },
            }
        )
    )
    return path


async def _records(bus: Bus, n: int) -> list[Any]:
    out: list[Any] = []

    async def enough() -> bool:
        out[:] = await bus.audit_records()
        return len(out) >= n

    await poll(enough, timeout=30)
    return out


async def test_a_mixed_run_leaves_one_complete_record_per_outcome_that_survives_a_restart(
    tmp_path: Path, loom_procs: LoomProcesses, bus: Bus, nats_server: NatsServer
) -> None:
    echo = echo_worker(tmp_path, "echo", tiers=["local", "limited"])
    strict = echo_worker(
        tmp_path, "strict", input_schema={"type": "object", "required": ["text"]}, tiers=["local"]
    )
    loom_procs.router(_policy(tmp_path), echo, strict)
    loom_procs.worker(echo, "local")
    loom_procs.worker(echo, "limited")
    loom_procs.worker(strict, "local")

    sub = await bus.subscribe_results("mixed", "acme")
    tasks = {
        "ok": TaskMessage(task_id="ok", parent_task_id="mixed", worker_type="echo", tenant="acme"),
        "bad-input": TaskMessage(
            task_id="bad-input", parent_task_id="mixed", worker_type="strict", tenant="acme"
        ),
        "nobody": TaskMessage(task_id="nobody", parent_task_id="mixed", worker_type="ghost", tenant="acme"),
        "first": TaskMessage(
            task_id="first", parent_task_id="mixed", worker_type="echo", model_tier="limited", tenant="acme"
        ),
        "second": TaskMessage(
            task_id="second", parent_task_id="mixed", worker_type="echo", model_tier="limited", tenant="acme"
        ),
    }
    traces: dict[str, str] = {}
    for name, task in tasks.items():
        with tracing.root("submit", submitted_by="tenant_acme"):
            traces[name] = tracing.current_trace_id() or ""
            await bus.publish_task(task)
    results = {r["task_id"]: r for r in await collect(sub, len(tasks), timeout=60)}
    await sub.close()
    # One of the two "limited" tasks got the tier's one request a minute, the other waited and was refused.
    admitted, refused = (
        ("first", "second") if results["second"]["status"] == "failed" else ("second", "first")
    )
    statuses = {k: r["status"] for k, r in results.items()}
    assert statuses == {
        "ok": "completed", "bad-input": "failed", "nobody": "failed", admitted: "completed", refused: "failed"
    }  # fmt: skip
    assert all(results[k]["trace_id"] == traces[k] for k in tasks)  # every result names its trace

    records = {r.task_id: r for r in await _records(bus, len(tasks))}
    assert len(records) == len(tasks)  # one record per outcome, none twice
    expected = {
        "ok": ("completed", None, "worker", "echo", "local"),
        "bad-input": ("failed", "invalid_input", "worker", "strict", "local"),
        "nobody": ("dead_lettered", "unknown_worker_type", "router", "ghost", None),
        admitted: ("completed", None, "worker", "echo", "limited"),
        refused: ("rate_limited", "rate_limited", "router", "echo", "limited"),
    }
    for name, (outcome, kind, role, worker_type, tier) in expected.items():
        r = records[name]
        assert (r.outcome, r.error_kind, r.role, r.worker_type, r.tier) == (
            outcome,
            kind,
            role,
            worker_type,
            tier,
        )
        assert r.tenant == "acme" and r.trace_id == traces[name] and r.submitter == "tenant_acme"
        assert r.payload is None  # no payloads unless enabled
    assert records["ok"].duration_ms > 0 and records["ok"].attempt == 1
    dead = {d.dead_letter.task_id: d.dead_letter for d in await bus.dead_letters()}
    assert {k: dead[k].trace_id for k in ("nobody", refused)} == {k: traces[k] for k in ("nobody", refused)}

    # Durable: the stream is file-backed and keeps every record across a server restart.
    await bus.close()
    nats_server.stop()
    nats_server.start()
    again = await Bus.connect(bus.settings, ensure_streams=False)
    try:
        assert {r.task_id for r in await again.audit_records()} == set(tasks)
        info = await again.js.stream_info(STREAM_AUDIT)
        assert info.config.storage == "file"
    finally:
        await again.close()

    # `loom audit` filters and exports them.
    def audit(*args: str) -> Any:
        done = await_cli("audit", *args)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def await_cli(*args: str) -> Any:
        return run_cli(*args, "--run-dir", str(tmp_path / "no-run"), nats_url=nats_server.url)

    limited = [
        json.loads(line) for line in audit("--outcome", "rate_limited", "--format", "jsonl").splitlines()
    ]
    assert [r["task_id"] for r in limited] == [refused]
    by_worker = [json.loads(line) for line in audit("--worker", "strict", "--format", "jsonl").splitlines()]
    assert [r["task_id"] for r in by_worker] == ["bad-input"]
    assert audit("--tenant", "other", "--format", "jsonl") == ""
    assert audit("--since", "2099-01-01", "--format", "jsonl") == ""
    rows = list(csv.DictReader(io.StringIO(audit("--tenant", "acme", "--since", "1h", "--format", "csv"))))
    assert sorted(r["task_id"] for r in rows) == sorted(tasks)
    assert {r["task_id"]: r["outcome"] for r in rows}["nobody"] == "dead_lettered"
    shown = await_cli("dead-letter", "show", dead["nobody"].dead_letter_id)
    assert shown.returncode == 0 and f'"trace_id": "{traces["nobody"]}"' in shown.stdout
    table = audit("--outcome", "completed")
    assert table.count("\n") == 2 and traces["ok"] in table


async def test_a_full_buffer_drops_records_and_counts_them_without_slowing_the_caller(bus: Bus) -> None:
    """emit() never waits: past the buffer, records are dropped and counted."""
    from loom.audit import DROPPED, AuditRecord, AuditSettings, AuditWriter

    writer = AuditWriter(bus, AuditSettings(buffer=5))
    before = DROPPED.labels("buffer_full")._value.get()
    for i in range(20):
        writer.emit(AuditRecord(kind="task", outcome="completed", role="worker", task_id=str(i)))
    assert DROPPED.labels("buffer_full")._value.get() - before == 15
    await writer.close()
    await poll(lambda: _count(bus, 5), timeout=10)


async def _count(bus: Bus, n: int) -> bool:
    await asyncio.sleep(0)
    return len(await bus.audit_records()) == n


async def test_a_goal_dead_lettered_unread_leaves_a_goal_record(bus: Bus, nats_url: str) -> None:
    """A body no pipeline can read is dead-lettered once by the role that read it, and audited."""
    import nats

    from loom.bus import Delivery
    from loom.goal_delivery import read_goal
    from loom.subjects import STREAM_GOALS, goal_subject

    read: list[object] = []

    async def handle(d: Delivery) -> None:
        read.append(await read_goal(bus, d, "pipeline"))

    stop = asyncio.Event()
    goals = await bus.ensure_goal_consumer("broken", ack_wait=5, max_deliver=3, max_ack_pending=10)
    consumer = asyncio.create_task(
        bus.consume(STREAM_GOALS, goals, handle, max_in_flight=1, batch=1, stop=stop)
    )
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().publish(goal_subject("broken", "acme"), b'{"goal_id": ')
    finally:
        await nc.close()
    (rec,) = await _records(bus, 1)
    stop.set()
    await consumer
    assert read == [None]  # nothing a pipeline could run
    assert (rec.kind, rec.outcome, rec.error_kind, rec.role, rec.tenant) == (
        "goal", "dead_lettered", "malformed", "pipeline", "acme",
    )  # fmt: skip
    (dead,) = await bus.dead_letters()
    assert dead.dead_letter.reason == DeadLetterReason.MALFORMED
