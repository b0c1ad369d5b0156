"""Loom on a real three-node JetStream cluster (issue 20): replicated streams and buckets, the loss of
the server leading the task stream under load, and lag read from the consumer's leader.

Three nats-server processes with cluster routes on loopback ports (tests/support/nats_cluster.py);
a node is lost by SIGKILL and comes back with its store.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.js.errors import APIError, NotFoundError
from tests.support.backends import starts
from tests.support.nats_cluster import NatsCluster
from tests.support.pipelines import wait_goal_result
from tests.support.processes import LoomProcesses, echo_worker, poll, write_yaml

from loom.api import Autoscaling
from loom.bus import Bus, BusError, slots_ahead
from loom.cli.common import add_nats_options, nats_settings
from loom.messages import GoalMessage, TaskMessage, TaskStatus
from loom.pipeline.state import STATE_BUCKET
from loom.settings import NatsSettings, parse_replicas
from loom.subjects import (
    STREAM_ADVISORIES,
    STREAM_DEAD_LETTER,
    STREAM_GOALS,
    STREAM_INCOMING,
    STREAM_TASKS,
    task_subject,
    worker_consumer,
)
from loom_operator import metrics as operator_metrics
from loom_operator.k8s import Credentials, Kube
from loom_operator.reconcile import Reconciler
from loom_operator.scaler_loop import ScalerLoop, Target, consumer_lags, fetch_lags
from loom_operator.settings import Settings

pytestmark = pytest.mark.integration

REPO = str(Path(__file__).resolve().parents[2])
LOOM_STREAMS = (STREAM_INCOMING, STREAM_TASKS, STREAM_DEAD_LETTER, STREAM_GOALS, STREAM_ADVISORIES)


@pytest.fixture
def cluster() -> Iterator[NatsCluster]:
    c = NatsCluster().start()
    try:
        yield c
    finally:
        c.cleanup()


async def _replicas(bus: Bus, stream: str) -> tuple[int, str | None]:
    info = await bus.js.stream_info(stream)
    return int(info.config.num_replicas or 1), info.cluster.leader if info.cluster else None


def test_replicas_setting_is_one_number_from_1_to_5() -> None:
    assert parse_replicas(None) is None
    assert parse_replicas("") is None
    assert parse_replicas(" 3 ") == 3
    for bad in ("0", "6", "three", "-1", "2.5"):
        with pytest.raises(ValueError, match="LOOM_NATS_REPLICAS"):
            parse_replicas(bad)
    assert NatsSettings.from_env({"LOOM_NATS_REPLICAS": "3"}).replicas == 3
    assert NatsSettings.from_env({}).replicas is None
    parser = argparse.ArgumentParser()
    add_nats_options(parser)
    assert nats_settings(parser.parse_args(["--nats-replicas", "3"])).replicas == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["--nats-replicas", "9"])


async def test_streams_and_buckets_get_the_replicas_setting_and_keep_them(cluster: NatsCluster) -> None:
    plain = await Bus.connect(NatsSettings(url=cluster.url, name="plain"))
    r3 = None
    try:
        for stream in LOOM_STREAMS:  # no setting, new stream: one replica
            assert (await _replicas(plain, stream))[0] == 1
        await plain.key_value("state")
        await plain.js_publish("loom.tasks.echo.local", b"kept")

        # the setting scales the existing streams and bucket up (a stream update), messages kept
        r3 = await Bus.connect(NatsSettings(url=cluster.url, name="r3", replicas=3))
        for stream in LOOM_STREAMS:
            replicas, leader = await _replicas(r3, stream)
            assert (replicas, leader is not None) == (3, True), stream
        await r3.key_value("state")
        assert (await _replicas(r3, "KV_state"))[0] == 3
        assert await r3.stream_messages(STREAM_TASKS) == 1
        # a new bucket is created with the setting's replicas
        await r3.key_value("fresh")
        assert (await _replicas(r3, "KV_fresh"))[0] == 3

        # a client without the setting (loom submit from a laptop) leaves them as they are
        await plain.ensure_streams()
        await plain.key_value("state")
        assert all([(await _replicas(plain, s))[0] == 3 for s in (*LOOM_STREAMS, "KV_state")])

        # more replicas than servers: a clear error naming the setting, nothing changed
        with pytest.raises(BusError, match=r"5 replicas: .*LOOM_NATS_REPLICAS must not exceed"):
            await Bus.connect(NatsSettings(url=cluster.url, name="r5", replicas=5), connect_timeout=10)
        assert (await _replicas(plain, STREAM_INCOMING))[0] == 3
    finally:
        await plain.close()
        if r3 is not None:
            await r3.close()


async def test_more_replicas_than_one_server_is_a_clear_error(nats_url: str) -> None:
    with pytest.raises(BusError, match=r"3 replicas: .*LOOM_NATS_REPLICAS must not exceed"):
        await Bus.connect(NatsSettings(url=nats_url, replicas=3), connect_timeout=10)


async def _lead_consumer(bus: Bus, stream: str, consumer: str, server: str) -> None:
    """Move a consumer's leadership to ``server`` (a leader stepdown with a preferred placement)."""
    for _ in range(50):
        info = await bus.js.consumer_info(stream, consumer)
        if info.cluster and info.cluster.leader == server:
            return
        if info.cluster and info.cluster.leader:
            await bus.nc.request(
                f"$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{consumer}",
                json.dumps({"placement": {"preferred": server}}).encode(),
                timeout=5,
            )
        await asyncio.sleep(0.2)
    raise AssertionError(f"{consumer} is not led by {server}")


TASKS = 2000
WORKERS = 2
WORKER_IN_FLIGHT = 8


async def test_tasks_survive_the_loss_of_the_task_streams_leader(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    """2,000 tasks through a real router and two workers on R3 streams; the server leading the task
    stream (and the workers' consumer, and holding the submitter's connection) is SIGKILLed with half
    the tasks submitted, the other half submitted while it is gone, and restarted later. Every
    submission is stored, every task gets a result; duplicates are only redeliveries of tasks whose
    acknowledgement was lost with the leader, at most one per task a worker held at that moment
    (running, or pulled ahead of its slots)."""
    env = {"LOOM_NATS_REPLICAS": "3"}
    admin = await Bus.connect(NatsSettings(url=cluster.url, name="admin", replicas=3))
    procs = LoomProcesses(cluster.url)
    buses = [admin]
    try:
        leader = cluster.stream_leader(STREAM_TASKS)
        # The submitter is connected to the server about to be lost (it learns the others from it).
        submitter = await Bus.connect(
            NatsSettings(url=cluster.nodes[leader].url, name="submitter"), ensure_streams=False
        )
        buses.append(submitter)
        # Results are core NATS: a caller receives them while its connection stays up, so the
        # caller collecting them here talks to the servers that stay up (see docs/operations.md).
        others = ",".join(n.url for i, n in enumerate(cluster.nodes) if i != leader)
        collector = await Bus.connect(NatsSettings(url=others, name="caller"), ensure_streams=False)
        buses.append(collector)
        echo = echo_worker(tmp_path, "echo", timeout_seconds=5, max_in_flight=WORKER_IN_FLIGHT)
        procs.spawn("router", "--config", str(echo), "--ack-wait", "5", env=env)
        for _ in range(WORKERS):
            procs.spawn(
                "worker", "--config", str(echo), "--tier", "local", "--ack-grace-seconds", "2", env=env
            )
        # The same server also leads the workers' consumer, so its loss takes their pulls and acks.
        await _lead_consumer(admin, STREAM_TASKS, worker_consumer("echo", "local"), f"n{leader + 1}")
        sub = await collector.subscribe_results("failover")
        counts: Counter[str] = Counter()

        async def drain() -> None:
            while sub.pending():
                counts[json.loads(await sub.get())["task_id"]] += 1

        tasks = [
            TaskMessage(parent_task_id="failover", worker_type="echo", payload={"i": i, "sleep": 0.01})
            for i in range(TASKS)
        ]
        submitted: list[str] = []
        window = asyncio.Semaphore(32)

        async def submit(task: TaskMessage) -> None:
            async with window:
                await submitter.publish_task(task)  # raises BusError when not stored
                submitted.append(task.task_id)

        async def a_fifth_done() -> bool:
            await drain()
            return len(counts) >= TASKS // 5

        # Half the tasks go before the kill; the other half wait for it, so they are submitted
        # while the leader is gone and its successor not yet elected, however fast the machine.
        killed = asyncio.Event()

        async def submit_after_the_kill(task: TaskMessage) -> None:
            await killed.wait()
            await submit(task)

        half = TASKS // 2
        submitting = asyncio.gather(
            *(submit(t) for t in tasks[:half]), *(submit_after_the_kill(t) for t in tasks[half:])
        )
        await poll(a_fifth_done, timeout=120)
        assert cluster.stream_leader(STREAM_TASKS) == leader
        cluster.kill(leader)
        killed.set()
        killed_at, submitted_at_kill = len(counts), len(submitted)
        assert submitted_at_kill <= half
        restarted = False

        async def done() -> bool:
            nonlocal restarted
            await drain()
            if not restarted and len(counts) >= (killed_at + TASKS) // 2:
                cluster.restart(leader)
                restarted = True
            return len(counts) == TASKS

        await poll(done, timeout=240, interval=0.1)
        await submitting
        assert restarted
        await asyncio.sleep(3)  # redeliveries still on their way are counted too
        await drain()
        assert set(counts) == {t.task_id for t in tasks}  # 0 lost
        assert sorted(submitted) == sorted(t.task_id for t in tasks)
        duplicates = sum(n - 1 for n in counts.values())
        print(
            f"killed n{leader + 1} after {killed_at} results, {submitted_at_kill} submitted; "
            f"results {sum(counts.values())}, duplicates {duplicates}; "
            f"new leader n{cluster.stream_leader(STREAM_TASKS) + 1}; tasks stored "
            f"{(await admin.js.stream_info(STREAM_INCOMING)).state.last_seq}"
        )
        assert max(counts.values()) <= 2
        # a worker holds its slots and the tasks pulled ahead of them (its pull batch: min(128, slots))
        assert duplicates <= WORKERS * (WORKER_IN_FLIGHT + slots_ahead(WORKER_IN_FLIGHT, WORKER_IN_FLIGHT))
        assert await admin.dead_letters() == []
        # No submission stored twice: re-sent publishes carry the same Nats-Msg-Id.
        assert (await admin.js.stream_info(STREAM_INCOMING)).state.last_seq == TASKS
    finally:
        procs.cleanup()
        for bus in buses:
            await bus.close()


def _consumer_leader(cluster: NatsCluster, consumer: str) -> int | None:
    """Index of the node a running node names as ``consumer``'s leader (None while there is none)."""
    for i, node in enumerate(cluster.nodes):
        if node.proc is None:
            continue
        for acc in cluster.jsz(i, consumers="true").get("account_details") or []:
            for st in acc.get("stream_detail") or []:
                for c in st.get("consumer_detail") or []:
                    leader = (c.get("cluster") or {}).get("leader")
                    if c.get("name") == consumer and leader:
                        return int(str(leader).removeprefix("n")) - 1
    return None


async def test_the_scaler_reads_lag_from_the_consumers_leader_through_a_leader_change(
    cluster: NatsCluster,
) -> None:
    bus = await Bus.connect(NatsSettings(url=cluster.url, name="scaler-test", replicas=3))
    http = httpx.AsyncClient(timeout=5)
    try:
        consumer = await bus.ensure_worker_consumer(
            "echo", "local", ack_wait=30, max_deliver=3, max_ack_pending=100
        )
        for _ in range(7):
            await bus.js_publish(task_subject("echo", "local"), b"{}")
        monitors = ",".join(n.monitor_url for n in cluster.nodes)

        async def agrees(expected: int) -> bool:
            try:
                truth = (await bus.consumer_info(STREAM_TASKS, consumer)).total  # the leader answers
            except (TimeoutError, APIError):  # no leader yet
                return False
            return truth == expected and (await fetch_lags(http, monitors)).get(consumer) == truth

        await poll(lambda: agrees(7), timeout=20)
        leader = _consumer_leader(cluster, consumer)
        assert leader is not None
        # What reading one follower's monitoring would give: not the leader's count.
        followers = [
            consumer_lags(cluster.jsz(i, consumers="true")).get(consumer) for i in range(3) if i != leader
        ]
        assert any(lag != 7 for lag in followers), followers

        cluster.kill(leader)
        for _ in range(5):
            await bus.js_publish(task_subject("echo", "local"), b"{}")
        await poll(lambda: agrees(12), timeout=60)
        assert _consumer_leader(cluster, consumer) not in (None, leader)

        # One scaler pass on the new leader's reading: the real consumer's lag is observed as is,
        # a tier whose consumer does not exist is not scaled up (to its maximum or at all).
        settings = Settings()
        kube = Kube(Credentials("https://127.0.0.1:1", None, True, None, None, None))
        reconciler = Reconciler(kube, settings, keda=False)
        steady = Autoscaling(min_replicas=1, max_replicas=10, target_lag=100)
        targets = [
            Target("team", "echo", "echo", "local", "echo-local", steady, 1),
            Target("team", "ghost", "ghost", "local", "ghost-local", steady, 2),
        ]
        loop = ScalerLoop(kube, reconciler, monitors, lambda: targets, interval=1)

        def desired(worker: str) -> float | None:
            sample = "loom_operator_scaler_desired_replicas"
            return operator_metrics.REGISTRY.get_sample_value(sample, {"worker": worker, "tier": "local"})

        try:
            decided = {t.worker: d for t, d in await loop.tick()}
            assert (desired("echo"), desired("ghost")) == (1, 2)
            targets.pop()  # the ghost Worker is deleted: its series go at the next pass
            assert await loop.tick() == []  # (nothing due yet)
            assert (desired("echo"), desired("ghost")) == (1, None)
        finally:
            await loop.aclose()
            await kube.aclose()
        observed = reconciler.observation("team", "echo", "local")
        assert observed is not None and observed.lag == 12
        assert decided["echo"].desired == 1
        assert decided["ghost"].desired == 2 and decided["ghost"].wanted == 1
    finally:
        await http.aclose()
        await bus.close()


def _stage(call: dict[str, Any]) -> str:
    (name,) = {"first", "second", "third"} & set(call["payload"])
    return name


async def test_a_pipeline_resumes_after_the_loss_of_the_server_holding_its_state(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    """A three-stage pipeline through real router, worker and pipeline processes on R3 streams and
    buckets; while stage two runs, the server leading the pipeline-state bucket (and holding the
    pipeline's connection) is SIGKILLed. The goal completes, no attempt is used up by the loss."""
    env = {"LOOM_NATS_REPLICAS": "3", "PYTHONPATH": REPO}
    admin = await Bus.connect(NatsSettings(url=cluster.url, name="admin", replicas=3))
    procs = LoomProcesses(cluster.url)
    buses = [admin]
    try:
        calls, gate = tmp_path / "calls.jsonl", tmp_path / "release-second"
        step = write_yaml(
            tmp_path,
            "worker-step",
            {
                "name": "step",
                "worker_kind": "processor",
                "processing_backend": "tests.support.backends.RecordingBackend",
                "backend_config": {"calls_file": str(calls), "tag": "step"},
                "default_model_tier": "local",
            },
        )
        stages = [
            {"name": "first", "worker_type": "step", "input_mapping": {"first": "goal.context.x"}},
            {
                "name": "second",
                "worker_type": "step",
                "timeout_seconds": 60,
                "input_mapping": {"second": "first.output.by", "wait_for": "goal.context.gate"},
            },
            {"name": "third", "worker_type": "step", "input_mapping": {"third": "second.output.in.second"}},
        ]
        pipeline = write_yaml(tmp_path, "resume", {"name": "resume", "pipeline_stages": stages})
        started = [
            procs.spawn("router", "--config", str(step), env=env, ready=False),
            procs.spawn("worker", "--config", str(step), env=env, ready=False),
            procs.spawn("pipeline", "--config", str(pipeline), "--ack-wait", "3", env=env, ready=False),
        ]
        for p in started:
            p.wait_ready()

        goal = GoalMessage(pipeline="resume", context={"x": 1, "gate": str(gate)})
        await poll(lambda: _has_stream(admin, f"KV_{STATE_BUCKET}"), timeout=30)
        # The server that will be lost leads the state bucket and holds the pipeline's connection.
        holder = _connected_node(cluster, "loom-pipeline-resume")
        await _lead_stream(admin, f"KV_{STATE_BUCKET}", f"n{holder + 1}")
        others = ",".join(n.url for i, n in enumerate(cluster.nodes) if i != holder)
        caller = await Bus.connect(NatsSettings(url=others, name="caller"), ensure_streams=False)
        buses.append(caller)
        sub = await caller.subscribe_results(goal.goal_id)
        await caller.publish_goal(goal)

        await poll(lambda: [_stage(c) for c in starts(calls)] == ["first", "second"], timeout=60)
        cluster.kill(holder)
        gate.touch()  # stage two answers while the bucket elects a new leader
        result = await wait_goal_result(sub, 120)
        await sub.close()

        (pipe,) = [p for p in procs.procs if p.args[0] == "pipeline"]
        assert result.status == TaskStatus.COMPLETED, f"{result.error}\n{pipe.log()}"
        assert result.output is not None and result.output["third"]["in"] == {"third": "step"}
        runs = Counter(_stage(c) for c in starts(calls))
        # A stage result sent while the pipeline was between servers is lost (core NATS), so the
        # pipeline asks again for the stage still running after it reconnects: at most one extra run.
        assert (runs["first"], runs["third"]) == (1, 1) and 1 <= runs["second"] <= 2, runs
        assert {s.name: s.attempts for s in result.stages} == {"first": 1, "second": 1, "third": 1}
        assert cluster.stream_leader(f"KV_{STATE_BUCKET}") != holder
        cluster.restart(holder)
    finally:
        procs.cleanup()
        for bus in buses:
            await bus.close()


def _connected_node(cluster: NatsCluster, name: str) -> int:
    """The node holding the client connection called ``name``."""
    for i, node in enumerate(cluster.nodes):
        with urllib.request.urlopen(f"{node.monitor_url}/connz?limit=1000", timeout=2) as r:
            if any(c.get("name") == name for c in json.loads(r.read()).get("connections") or []):
                return i
    raise AssertionError(f"no node holds a connection named {name!r}")


async def _lead_stream(bus: Bus, stream: str, server: str) -> None:
    """Move a stream's leadership to ``server`` (a leader stepdown with a preferred placement)."""
    for _ in range(50):
        info = await bus.js.stream_info(stream)
        if info.cluster and info.cluster.leader == server:
            return
        if info.cluster and info.cluster.leader:
            await bus.nc.request(
                f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}",
                json.dumps({"placement": {"preferred": server}}).encode(),
                timeout=5,
            )
        await asyncio.sleep(0.2)
    raise AssertionError(f"{stream} is not led by {server}")


async def _has_stream(bus: Bus, name: str) -> bool:
    try:
        await bus.js.stream_info(name)
    except NotFoundError:
        return False
    return True
