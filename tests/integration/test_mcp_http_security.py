"""``loom mcp --transport streamable-http`` as a real process: a bearer token off loopback, Host and
Origin checks always, the token never on the command line; driven with the MCP SDK's client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mcp import Client
from tests.support.mcp_gateway import HEADERS, INIT, Gateway, with_headers
from tests.support.processes import LoomProcesses, loom_procs, write_yaml

__all__ = ["loom_procs"]

pytestmark = pytest.mark.integration

TOKEN = "t0ken-for-the-loom-mcp-gateway"


def gateway_config(tmp: Path) -> Path:
    write_yaml(tmp, "echo", {
        "name": "echo", "description": "Echo the payload back.", "worker_kind": "processor",
        "processing_backend": "loom.contrib.noop.EchoBackend", "default_model_tier": "local",
        "timeout_seconds": 10, "max_deliver": 1,
        "input_schema": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
    })
    tools = {"workers": [{"config": "echo.yaml"}]}
    return write_yaml(tmp, "gateway", {"name": "secure_gateway", "tools": tools})


@pytest.fixture
def started(tmp_path: Path, loom_procs: LoomProcesses, nats_url: str) -> Iterator[list[Gateway]]:
    """Gateways a test starts, stopped at its end (with a router and an echo worker running)."""
    gateway_config(tmp_path)
    loom_procs.router(tmp_path / "echo.yaml")
    loom_procs.worker(tmp_path / "echo.yaml", "local")
    gateways: list[Gateway] = []
    yield gateways
    for g in gateways:
        g.stop()


def token_file(tmp: Path) -> Path:
    path = tmp / "mcp-token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


async def test_off_loopback_needs_the_token_and_then_tools_work(
    tmp_path: Path, nats_url: str, started: list[Gateway]
) -> None:
    # the Host clients use must be listed; here 127.0.0.1 reaches the 0.0.0.0 listener
    g = Gateway(
        tmp_path / "gateway.yaml", nats_url, "0.0.0.0",
        "--token-file", str(token_file(tmp_path)), "--allowed-host", "127.0.0.1:*",
    )
    started.append(g)
    g.wait_ready()
    assert "WARNING" in g.log() and "EVERY network interface" in g.log()
    assert TOKEN not in g.log()

    async with httpx.AsyncClient(timeout=30) as raw:
        no_token = await raw.post(g.url, json=INIT, headers=HEADERS)
        assert no_token.status_code == 401
        wrong_token = {"authorization": "Bearer nope-nope-nope-nope"}
        wrong = await raw.post(g.url, json=INIT, headers=HEADERS | wrong_token)
        assert wrong.status_code == 401
        foreign = await raw.post(
            g.url, json=INIT,
            headers=HEADERS | {"authorization": f"Bearer {TOKEN}", "origin": "http://evil.example"},
        )
        assert foreign.status_code == 403
        bad_host = await raw.post(
            g.url, json=INIT, headers=HEADERS | {"authorization": f"Bearer {TOKEN}", "host": "evil.example"}
        )
        assert bad_host.status_code == 421

    with pytest.raises(Exception):  # noqa: B017 - the SDK surfaces the 401 as a connection failure
        async with Client(g.url) as client:
            await client.list_tools()

    async with Client(with_headers(g.url, {"authorization": f"Bearer {TOKEN}"})) as client:
        assert [t.name for t in (await client.list_tools()).tools] == ["echo"]
        done = await client.call_tool("echo", {"text": "with the token"})
        assert not done.is_error
        assert done.structured_content is not None
        assert done.structured_content["echo"] == {"text": "with the token"}


def test_off_loopback_without_a_token_or_allowed_host_does_not_start(tmp_path: Path, nats_url: str) -> None:
    gateway_config(tmp_path)
    no_token = {"LOOM_MCP_TOKEN": "", "LOOM_MCP_TOKEN_FILE": ""}
    cases = [
        (("--allowed-host", "127.0.0.1:*"), no_token, "needs a bearer token"),
        (("--token-file", str(token_file(tmp_path))), {}, "needs --allowed-host"),
        ((), {"LOOM_MCP_TOKEN": "short"}, "shorter than 16 characters"),
    ]
    for extra, env, why in cases:
        g = Gateway(tmp_path / "gateway.yaml", nats_url, "0.0.0.0", *extra, env=env)
        try:
            assert g.wait_exit() == 2, g.log()
            assert why in g.log()
        finally:
            g.stop()


async def test_loopback_refuses_a_local_web_page_origin(
    tmp_path: Path, nats_url: str, started: list[Gateway]
) -> None:
    """No token needed on loopback, but a page on http://localhost:3000 cannot drive the gateway."""
    g = Gateway(tmp_path / "gateway.yaml", nats_url, "127.0.0.1", env={"LOOM_MCP_TOKEN": ""})
    started.append(g)
    g.wait_ready()
    async with httpx.AsyncClient(timeout=30) as raw:
        page = await raw.post(g.url, json=INIT, headers=HEADERS | {"origin": "http://localhost:3000"})
        assert page.status_code == 403
        rebound = await raw.post(g.url, json=INIT, headers=HEADERS | {"host": "evil.example"})
        assert rebound.status_code == 421
    async with Client(g.url) as client:
        done = await client.call_tool("echo", {"text": "local"})
        assert not done.is_error


async def test_token_from_the_environment_and_a_listed_origin(
    tmp_path: Path, nats_url: str, started: list[Gateway]
) -> None:
    g = Gateway(
        tmp_path / "gateway.yaml", nats_url, "127.0.0.1", "--allowed-origin", "https://app.example",
        env={"LOOM_MCP_TOKEN": TOKEN},
    )
    started.append(g)
    g.wait_ready()
    async with httpx.AsyncClient(timeout=30) as raw:
        assert (await raw.post(g.url, json=INIT, headers=HEADERS)).status_code == 401
        listed = await raw.post(
            g.url, json=INIT,
            headers=HEADERS | {"authorization": f"Bearer {TOKEN}", "origin": "https://app.example"},
        )
        assert listed.status_code == 200
