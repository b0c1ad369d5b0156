"""The chart's MCP gateway (mcpGateway): a Secret-held bearer token, the tenant's bus identity, the
operator's Worker/Pipeline ConfigMaps mounted as the tool definitions — and the rendered pod's own
command, config and token serving tools to the MCP SDK's client."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from mcp import Client

from loom.api import PipelineSpec, WorkerSpec
from loom_operator.render import Owner, render_pipeline, render_worker
from loom_operator.settings import Settings
from tests.support import chart
from tests.support.mcp_gateway import HEADERS, INIT, Gateway, with_headers
from tests.support.processes import LoomProcesses, loom_procs

__all__ = ["loom_procs"]

VALUES: dict[str, Any] = {
    "nats": {"bundled": {"enabled": True}, "auth": {"tenants": ["acme"]}},
    "mcpGateway": {
        "enabled": True,
        "tenant": "acme",
        "workers": [{"name": "echo", "tool": "echo_text", "timeoutSeconds": 20}],
        "pipelines": [{"name": "twice"}],
        "allowedHosts": ["mcp.example.com"],
    },
}
ECHO = WorkerSpec.model_validate(
    {
        "name": "echo",
        "description": "Echo the payload back.",
        "workerKind": "processor",
        "processingBackend": "loom.contrib.noop.EchoBackend",
        "timeoutSeconds": 10,
        "maxDeliver": 1,
        "inputSchema": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
    }
)
TWICE = PipelineSpec.model_validate(
    {
        "name": "twice",
        "pipelineStages": [
            {"name": "a", "workerType": "echo", "inputMapping": {"text": "goal.context.text"}},
            {
                "name": "b",
                "workerType": "echo",
                "inputMapping": {"text": "goal.context.text"},
                "dependsOn": ["a"],
            },
        ],
    }
)


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = chart.one(objects, "Deployment", "loom-mcp")["spec"]["template"]["spec"]["containers"]
    return c


def test_the_gateway_renders_valid_with_a_token_secret_and_the_tenants_identity(tmp_path: Path) -> None:
    objects = chart.render(VALUES, tmp_path)
    assert chart.validate(objects) == []
    token = chart.one(objects, "Secret", "loom-mcp-token")
    assert len(base64.b64decode(token["data"]["token"])) == 48
    c = container(objects)
    assert (
        "--token-file=/etc/loom/mcp-token/token" in c["args"] and "--transport=streamable-http" in c["args"]
    )
    assert (
        "--allowed-host=loom-mcp.loom-system.svc:*" in c["args"]
        and "--allowed-host=mcp.example.com" in c["args"]
    )
    secret_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e}
    assert secret_env["LOOM_NATS_PASSWORD"] == {"name": "loom-nats-auth-tenant-acme", "key": "password"}
    assert not any("token" in str(e.get("value", "")).lower() for e in c["env"])  # the token is a file only
    pod = chart.one(objects, "Deployment", "loom-mcp")["spec"]["template"]
    assert pod["metadata"]["labels"]["loom.dev/bus-client"] == "true"
    config_maps = {v["configMap"]["name"] for v in pod["spec"]["volumes"] if "configMap" in v}
    assert config_maps == {"loom-mcp", "echo-config", "twice-config"}
    policy = chart.one(objects, "NetworkPolicy", "loom-mcp")
    assert policy["spec"]["ingress"][0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "loom-system"}}}
    ]
    mine = {**VALUES["mcpGateway"], "tokenSecret": "my-token"}
    objects = chart.render({**VALUES, "mcpGateway": mine}, tmp_path)
    assert not [o for o in chart.by_kind(objects, "Secret") if o["metadata"]["name"] == "loom-mcp-token"]
    assert {
        "name": "token",
        "secret": {"secretName": "my-token", "items": [{"key": "token", "path": "token"}]},
    } in (chart.one(objects, "Deployment", "loom-mcp")["spec"]["template"]["spec"]["volumes"])


@pytest.mark.parametrize(
    ("gateway", "message"),
    [
        ({"enabled": True, "tenant": "acme"}, "list at least one Worker"),
        ({"enabled": True, "tenant": "zeta", "workers": [{"name": "echo"}]}, '"zeta" has no bus identity'),
        (
            {"enabled": True, "tenant": "acme", "namespace": "apps", "workers": [{"name": "echo"}]},
            "copy Secret loom-nats-auth-tenant-acme there",
        ),
        ({"enabled": True, "workers": [{"name": "Not_A_Name"}]}, "mcpGateway.workers.0.name"),
        ({"enabled": True, "workers": [{"name": "echo", "shell": "x"}]}, "shell"),
    ],
)
def test_bad_gateway_values_are_refused(gateway: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(chart.HelmFailed, match=message):
        chart.render({**VALUES, "mcpGateway": gateway}, tmp_path)


@pytest.fixture
def gateways() -> Iterator[list[Gateway]]:
    started: list[Gateway] = []
    yield started
    for g in started:
        g.stop()


async def test_the_rendered_pod_serves_its_tools_with_the_secret_token(
    tmp_path: Path, nats_url: str, loom_procs: LoomProcesses, gateways: list[Gateway]
) -> None:
    """The Deployment's own arguments, its ConfigMap, the operator's Worker and Pipeline ConfigMaps and
    the token Secret laid out as the pod mounts them (under a temporary root instead of /etc/loom)."""
    objects = chart.render(VALUES, tmp_path)
    root = tmp_path / "etc-loom"
    c = container(objects)
    token = base64.b64decode(chart.one(objects, "Secret", "loom-mcp-token")["data"]["token"]).decode()
    config = chart.one(objects, "ConfigMap", "loom-mcp")["data"]["gateway.yaml"].replace(
        "/etc/loom", str(root)
    )
    settings = Settings(image="loom:test", nats_url=nats_url)
    echo_files = render_worker(Owner("Worker", "echo", "loom-system"), ECHO, settings)[0]["data"]
    twice_files = render_pipeline(Owner("Pipeline", "twice", "loom-system"), TWICE, settings)[0]["data"]
    for path, text in {
        "gateway.yaml": config,
        "mcp-token/token": token,
        "workers/echo/worker.yaml": echo_files["worker.yaml"],
        "pipelines/twice/pipeline.yaml": twice_files["pipeline.yaml"],
    }.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    worker_file = root / "workers" / "echo" / "worker.yaml"
    loom_procs.router(worker_file)
    loom_procs.worker(worker_file, "standard")
    loom_procs.spawn("pipeline", "--config", str(root / "pipelines" / "twice" / "pipeline.yaml"))

    args = [
        a.replace("/etc/loom", str(root)) for a in c["args"][1:] if not a.startswith(("--host", "--port"))
    ]
    gateway = Gateway(Path(args[0].split("=", 1)[1]), nats_url, "0.0.0.0", *args[1:])
    gateways.append(gateway)
    gateway.wait_ready()
    assert token not in gateway.log()
    service_host = f"loom-mcp.loom-system.svc:{gateway.port}"

    async with httpx.AsyncClient(timeout=30) as raw:
        refused = await raw.post(gateway.url, json=INIT, headers=HEADERS | {"host": service_host})
        assert refused.status_code == 401
        unlisted = await raw.post(
            gateway.url,
            json=INIT,
            headers=HEADERS | {"host": "127.0.0.1", "authorization": f"Bearer {token}"},
        )
        assert unlisted.status_code == 421
    headers = {"authorization": f"Bearer {token}", "host": service_host}
    async with Client(with_headers(gateway.url, headers)) as client:
        assert sorted(t.name for t in (await client.list_tools()).tools) == ["echo_text", "twice"]
        done = await client.call_tool("echo_text", {"text": "through the chart's gateway"})
        assert not done.is_error and done.structured_content is not None
        assert done.structured_content["echo"] == {"text": "through the chart's gateway"}
        goal = await client.call_tool("twice", {"text": "goal"})
        assert not goal.is_error, goal.content
    assert yaml.safe_load(config)["tenant"] == "acme"
