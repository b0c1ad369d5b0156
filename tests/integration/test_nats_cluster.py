"""Loom on a real three-node JetStream cluster (issue 20): replicated streams and buckets, the loss of
the server leading the task stream under load, and lag read from the consumer's leader.

Three nats-server processes with cluster routes on loopback ports (tests/support/nats_cluster.py);
a node is lost by SIGKILL and comes back with its store.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.nats_cluster import NatsCluster
from tests.support.processes import LoomProcesses, echo_worker, poll

from loom.bus import Bus, BusError
from loom.cli.common import add_nats_options, nats_settings
from loom.messages import TaskMessage
from loom.settings import NatsSettings, parse_replicas
from loom.subjects import (
    STREAM_ADVISORIES,
    STREAM_DEAD_LETTER,
    STREAM_GOALS,
    STREAM_INCOMING,
    STREAM_TASKS,
    worker_consumer,
)

pytestmark = pytest.mark.integration

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
    stream is SIGKILLed mid-run and restarted later. Every task gets a result; duplicates are only
    redeliveries of tasks whose acknowledgement was lost with the leader, at most one per task a
    worker held at that moment."""
    env = {"LOOM_NATS_REPLICAS": "3"}
    admin = await Bus.connect(NatsSettings(url=cluster.url, name="admin", replicas=3))
    procs = LoomProcesses(cluster.url)
    collector: Bus | None = None
    try:
        leader = cluster.stream_leader(STREAM_TASKS)
        # Results are core NATS: a caller receives them while its connection stays up, so the
        # caller here talks to the servers that stay up (see docs/operations.md).
        others = ",".join(n.url for i, n in enumerate(cluster.nodes) if i != leader)
        collector = await Bus.connect(NatsSettings(url=others, name="caller"), ensure_streams=False)
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
        killed = restarted = False
        for start in range(0, TASKS, 50):
            await asyncio.gather(*(admin.publish_task(t) for t in tasks[start : start + 50]))
            await drain()
            if not killed and len(counts) >= TASKS // 5:
                assert cluster.stream_leader(STREAM_TASKS) == leader
                cluster.kill(leader)
                killed = True
                killed_at = len(counts)
        assert killed, f"only {len(counts)} results while publishing; the kill came too late"

        async def done() -> bool:
            nonlocal restarted
            await drain()
            if not restarted and len(counts) >= (killed_at + TASKS) // 2:
                cluster.restart(leader)
                restarted = True
            return len(counts) == TASKS

        await poll(done, timeout=240, interval=0.1)
        assert restarted
        await asyncio.sleep(3)  # redeliveries still on their way are counted too
        await drain()
        assert set(counts) == {t.task_id for t in tasks}  # 0 lost
        duplicates = sum(n - 1 for n in counts.values())
        print(f"results: {sum(counts.values())}, duplicates: {duplicates}, new leader ", end="")
        print(f"{cluster.stream_leader(STREAM_TASKS)} (was {leader})")
        assert max(counts.values()) <= 2
        assert duplicates <= WORKERS * WORKER_IN_FLIGHT
        assert await admin.dead_letters() == []
    finally:
        procs.cleanup()
        if collector is not None:
            await collector.close()
        await admin.close()
