"""Loom on a real three-node JetStream cluster (issue 20): replicated streams and buckets, the loss of
the server leading the task stream under load, and lag read from the consumer's leader.

Three nats-server processes with cluster routes on loopback ports (tests/support/nats_cluster.py);
a node is lost by SIGKILL and comes back with its store.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest
from tests.support.nats_cluster import NatsCluster

from loom.bus import Bus, BusError
from loom.cli.common import add_nats_options, nats_settings
from loom.settings import NatsSettings, parse_replicas
from loom.subjects import (
    STREAM_ADVISORIES,
    STREAM_DEAD_LETTER,
    STREAM_GOALS,
    STREAM_INCOMING,
    STREAM_TASKS,
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
