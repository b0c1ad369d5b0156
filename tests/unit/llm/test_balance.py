"""Spreading requests over replicas of one model server: the pure chooser by hand, then the
balancer over real HTTP in front of fake OpenAI-compatible servers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from tests.fakes.llm_server import FakeLLMServer
from tests.support.endpoints import loopback_allowed

from loom.api.router_policy import TierDefinition
from loom.llm.balance import least_in_flight
from loom.llm.balancer import STATUS_PATH, UPSTREAM_HEADER, Balancer
from loom.llm.base import ChatRequest, Message
from loom.llm.errors import Unavailable
from loom.llm.factory import build_provider


def test_the_replica_with_fewest_in_flight_is_chosen() -> None:
    assert least_in_flight([2, 0, 1]) == 1
    assert least_in_flight([3, 2, 2]) == 1  # the lowest index among equals
    assert least_in_flight([0, 0, 0]) == 0  # one request at a time stays on the first replica


def test_replicas_already_tried_are_skipped() -> None:
    assert least_in_flight([0, 5, 1], exclude={0}) == 2
    assert least_in_flight([0, 5, 1], exclude={0, 2}) == 1
    assert least_in_flight([0, 5], exclude={0, 1}) is None
    assert least_in_flight([]) is None


def test_requests_spread_as_they_come_and_go_by_hand() -> None:
    in_flight = [0, 0]
    first = least_in_flight(in_flight)
    in_flight[first] += 1
    second = least_in_flight(in_flight)
    in_flight[second] += 1
    assert {first, second} == {0, 1}
    in_flight[first] -= 1  # the first request answered: the next one takes its replica
    assert least_in_flight(in_flight) == first


def test_a_balancer_needs_an_upstream() -> None:
    with pytest.raises(ValueError, match="at least one upstream"):
        Balancer([])


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve(balancer: Balancer) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(balancer.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def replicas() -> AsyncIterator[list[FakeLLMServer]]:
    async with FakeLLMServer("openai", delay=0.3) as a, FakeLLMServer("openai", delay=0.3) as b:
        yield [a, b]


async def chat(session: aiohttp.ClientSession, url: str, text: str) -> tuple[int, str]:
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    async with session.post(f"{url}/v1/chat/completions", json=body) as response:
        await response.read()
        return response.status, response.headers[UPSTREAM_HEADER]


async def test_overlapping_requests_go_to_different_replicas(replicas: list[FakeLLMServer]) -> None:
    runner, url = await serve(Balancer([r.root_url for r in replicas]))
    try:
        async with aiohttp.ClientSession() as session:
            answers = await asyncio.gather(chat(session, url, "one"), chat(session, url, "two"))
            assert sorted(answers) == [(200, "0"), (200, "1")]
            assert [r.max_in_flight for r in replicas] == [1, 1]
            # The bodies arrived whole, each at one replica.
            texts = sorted(r.requests[0]["messages"][0]["content"] for r in replicas)
            assert texts == ["one", "two"]
            # One at a time: always the first replica.
            assert [await chat(session, url, "three"), await chat(session, url, "four")] == [(200, "0")] * 2
            async with session.get(url + STATUS_PATH) as response:
                status = (await response.json())["upstreams"]
        assert [(u["served"], u["in_flight"]) for u in status] == [(3, 0), (1, 0)]
    finally:
        await runner.cleanup()


async def test_a_replica_that_refuses_is_skipped(replicas: list[FakeLLMServer]) -> None:
    balancer = Balancer([f"http://127.0.0.1:{closed_port()}", replicas[1].root_url])
    runner, url = await serve(balancer)
    try:
        async with aiohttp.ClientSession() as session:
            assert await chat(session, url, "x") == (200, "1")
        assert [u["refused"] for u in balancer.status()] == [1, 0]
        assert balancer.in_flight == [0, 0]
    finally:
        await runner.cleanup()


async def test_a_replica_failing_mid_request_is_a_502_not_sent_again(replicas: list[FakeLLMServer]) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # took the request, then the process "crashes"
        writer.close()

    broken = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = broken.sockets[0].getsockname()[1]
    balancer = Balancer([f"http://127.0.0.1:{port}", replicas[1].root_url])
    runner, url = await serve(balancer)
    try:
        async with aiohttp.ClientSession() as session:
            body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
            async with session.post(f"{url}/v1/chat/completions", json=body) as response:
                assert response.status == 502
                assert (await response.json())["error"]["type"] == "upstream_failed"
        assert replicas[1].requests == []  # not sent to the other replica
        assert [(u["failed"], u["in_flight"]) for u in balancer.status()] == [(1, 0), (0, 0)]
    finally:
        await runner.cleanup()
        broken.close()
        await broken.wait_closed()


async def test_no_replica_left_is_a_502_the_provider_reads_as_unavailable() -> None:
    runner, url = await serve(Balancer([f"http://127.0.0.1:{closed_port()}"]))
    tier = TierDefinition(name="local", backend="local", base_url=f"{url}/v1")
    provider = build_provider(tier, loopback_allowed(url))
    try:
        with pytest.raises(Unavailable, match="HTTP 502 \\(upstream_unavailable\\)"):
            await provider.complete(ChatRequest(system="s", messages=[Message("user", "hi")]))
    finally:
        await provider.close()
        await runner.cleanup()
