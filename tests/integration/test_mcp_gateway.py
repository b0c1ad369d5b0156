"""``loom mcp`` as MCP clients see it: the SDK's client against the gateway process, with a real
nats-server, a real router, a real processor worker (echo backend) and a real pipeline orchestrator."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError
from mcp_types import Implementation
from tests.support.mcp_gateway import Gateway
from tests.support.processes import LoomProcesses, loom_procs, poll, write_yaml

from loom.bus import Bus
from loom.settings import NatsSettings

__all__ = ["loom_procs"]

pytestmark = pytest.mark.integration

ECHO_SCHEMA = {
    "type": "object",
    "required": ["text"],
    "properties": {"text": {"type": "string", "minLength": 1}, "fail": {"type": "string"}},
}


def _configs(tmp: Path) -> Path:
    write_yaml(tmp, "echo", {
        "name": "echo", "description": "Echo the payload back.", "worker_kind": "processor",
        "processing_backend": "loom.contrib.noop.EchoBackend", "default_model_tier": "local",
        "timeout_seconds": 10, "max_deliver": 1, "input_schema": ECHO_SCHEMA,
    })
    write_yaml(tmp, "pipe", {
        "apiVersion": "loom.dev/v1alpha1", "kind": "Pipeline", "metadata": {"name": "echo-twice"},
        "spec": {"description": "Echo, then echo the echo.", "pipelineStages": [
            {"name": "first", "workerType": "echo", "tier": "local",
             "inputMapping": {"text": "goal.context.text"}},
            {"name": "second", "workerType": "echo", "tier": "local",
             "inputMapping": {"text": "first.output.echo.text"}},
        ]},
    })
    (tmp / "ws" / "reports").mkdir(parents=True)
    (tmp / "ws" / "reports" / "r1.json").write_text('{"ok": true}')
    (tmp / "ws" / "notes.md").write_text("hidden by the patterns")
    (tmp / "secret.json").write_text('{"secret": 1}')
    (tmp / "ws" / "escape.json").symlink_to(tmp / "secret.json")
    return write_yaml(tmp, "gateway", {
        "name": "test_gateway", "description": "Loom test gateway",
        "tools": {
            "workers": [{"config": "echo.yaml"},
                        {"config": "echo.yaml", "name": "shout", "description": "Shout"}],
            "pipelines": [{"config": "pipe.yaml", "name": "echo_pipeline"}],
        },
        "resources": {"workspace_dir": "ws", "patterns": ["*.json", "*.txt"]},
    })


@pytest.fixture
def system(tmp_path: Path, loom_procs: LoomProcesses, nats_url: str) -> Iterator[Gateway]:
    """Router, echo worker, pipeline orchestrator and the gateway, all real processes."""
    gateway_config = _configs(tmp_path)
    loom_procs.router(tmp_path / "echo.yaml")
    loom_procs.worker(tmp_path / "echo.yaml", "local")
    loom_procs.spawn("pipeline", "--config", str(tmp_path / "pipe.yaml"))
    gateway = Gateway(gateway_config, nats_url, "127.0.0.1")
    try:
        gateway.wait_ready()
        yield gateway
    finally:
        gateway.stop()


def _text(result: types.CallToolResult) -> str:
    assert len(result.content) == 1 and isinstance(result.content[0], types.TextContent)
    return result.content[0].text


async def test_tools_listed_and_called_over_streamable_http(system: Gateway, nats_url: str) -> None:
    async with Client(system.url, client_info=Implementation(name="ide-agent", version="1")) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == {"echo", "shout", "echo_pipeline"}
        assert tools["echo"].description == "Echo the payload back."
        assert tools["shout"].description == "Shout"
        assert tools["echo"].input_schema == ECHO_SCHEMA
        assert tools["echo_pipeline"].description == "Echo, then echo the echo."
        assert tools["echo_pipeline"].input_schema["required"] == ["text"]
        assert tools["echo_pipeline"].input_schema["properties"]["text"]["type"] == "string"

        done = await client.call_tool("echo", {"text": "hello"})
        assert not done.is_error, _text(done)
        output = json.loads(_text(done))
        assert output["echo"] == {"text": "hello"}
        assert done.structured_content == output

        failed = await client.call_tool("shout", {"text": "x", "fail": "backend exploded"})
        assert failed.is_error and "backend exploded" in _text(failed)

        invalid = await client.call_tool("echo", {"text": ""})
        assert invalid.is_error and "invalid arguments" in _text(invalid)

        goal = await client.call_tool("echo_pipeline", {"text": "deep"})
        assert not goal.is_error, _text(goal)
        assert "deep" in _text(goal)

    # The audit trail says who submitted: this gateway, and the MCP client as it introduced itself.
    bus = await Bus.connect(NatsSettings(url=nats_url, name="audit-reader"))
    try:
        records: list[Any] = []

        async def echoed() -> bool:
            records[:] = [r for r in await bus.audit_records() if r.outcome == "completed"]
            return any(r.worker_type == "echo" for r in records)

        await poll(echoed, timeout=30)
    finally:
        await bus.close()
    assert {r.submitter for r in records} == {"mcp:test_gateway/ide-agent"}


async def test_workspace_resources_and_traversal_refused(system: Gateway, tmp_path: Path) -> None:
    async with Client(system.url) as client:
        listed = (await client.list_resources()).resources
        uris = sorted(str(r.uri) for r in listed)
        assert uris == ["workspace:///reports/r1.json"]  # notes.md hidden, the escaping symlink skipped
        read = await client.read_resource("workspace:///reports/r1.json")
        assert isinstance(read.contents[0], types.TextResourceContents)
        assert json.loads(read.contents[0].text) == {"ok": True}
        for bad in ("workspace:///../secret.json", "workspace:///%2e%2e/secret.json",
                    "workspace:///escape.json", "workspace:///notes.md", "file:///etc/passwd"):
            with pytest.raises(MCPError):
                await client.read_resource(bad)


async def test_workspace_change_notified_after_a_tool_call(system: Gateway, tmp_path: Path) -> None:
    received: list[Any] = []

    async def on_message(message: Any) -> None:
        received.append(message)

    async with Client(system.url, mode="legacy", message_handler=on_message) as client:
        (tmp_path / "ws" / "new.txt").write_text("written by a worker")
        result = await client.call_tool("echo", {"text": "after a write"})
        assert not result.is_error, _text(result)
        assert any(isinstance(m, types.ResourceListChangedNotification) for m in received), received
        uris = [str(r.uri) for r in (await client.list_resources()).resources]
        assert "workspace:///new.txt" in uris


async def test_stdio_transport(tmp_path: Path, loom_procs: LoomProcesses, nats_url: str) -> None:
    gateway_config = _configs(tmp_path)
    loom_procs.router(tmp_path / "echo.yaml")
    loom_procs.worker(tmp_path / "echo.yaml", "local")
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "loom.cli.main", "mcp", "--config", str(gateway_config)],
        env={**os.environ, "LOOM_NATS_URL": nats_url},
    )
    async with Client(params) as client:
        assert {t.name for t in (await client.list_tools()).tools} == {"echo", "shout", "echo_pipeline"}
        done = await client.call_tool("echo", {"text": "over stdio"})
        assert json.loads(_text(done))["echo"] == {"text": "over stdio"}


async def test_unreachable_worker_times_out_as_tool_error(tmp_path: Path, nats_url: str) -> None:
    """No router and no worker: the task is stored durably, the call gives up at its timeout."""
    write_yaml(tmp_path, "echo", {
        "name": "echo", "worker_kind": "processor", "processing_backend": "loom.contrib.noop.EchoBackend",
        "input_schema": ECHO_SCHEMA,
    })
    config = write_yaml(tmp_path, "gateway", {
        "name": "lonely", "nats_url": nats_url,
        "tools": {"workers": [{"config": "echo.yaml", "timeout_seconds": 0.5}]},
    })
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "loom.cli.main", "mcp", "--config", str(config)],
        env={k: v for k, v in os.environ.items() if k != "LOOM_NATS_URL"},
    )
    async with Client(params) as client:
        result = await client.call_tool("echo", {"text": "anyone?"})
        assert result.is_error and "within 0.5s" in _text(result)
