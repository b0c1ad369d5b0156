"""The original Loom's programmatic MCP API: ``create_server``, ``run_stdio``, ``run_streamable_http``.

    from loom.mcp import create_server, run_stdio, run_streamable_http

    server, gateway = create_server("configs/mcp/my_server.yaml")
    run_stdio(server, gateway)                       # or
    run_streamable_http(server, gateway, port=8000)  # loopback; a token for anything else

The gateway connects to NATS at its first worker or pipeline call (``nats_url`` argument, else
``LOOM_NATS_URL``, else the config's ``nats_url``); query tools never need it. Over HTTP the same
rules as ``loom mcp`` hold (:mod:`loom.mcp.http_security`): a bearer token off loopback,
Host/Origin allow-lists always.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loom.mcp.config import load_gateway
from loom.mcp.gateway import Gateway, serve_stdio, serve_streamable_http
from loom.mcp.http_security import load_token, plan_http_security
from loom.settings import NatsSettings


def create_server(config_path: str | Path, *, nats_url: str | None = None) -> tuple[Any, Gateway]:
    """Load a gateway config (GatewayConfigError lists every problem) and build its MCP server."""
    from loom import __version__

    plan = load_gateway(config_path)
    url = nats_url or os.environ.get("LOOM_NATS_URL") or plan.config.nats_url or NatsSettings.url
    settings = dataclasses.replace(NatsSettings.from_env(name=f"loom-mcp-{plan.config.name}"), url=url)
    gateway = Gateway(plan, None, version=__version__, nats=settings)
    return gateway.server, gateway


def _check(server: Any, gateway: Gateway) -> None:
    if server is not gateway.server:
        raise ValueError("server and gateway must come from the same create_server() call")


async def _serve(gateway: Gateway, serving: Any) -> None:
    try:
        await serving
    finally:
        await gateway.close()


def run_stdio(server: Any, gateway: Gateway) -> None:
    """Serve one client over stdin/stdout until it disconnects (blocks)."""
    _check(server, gateway)
    asyncio.run(_serve(gateway, serve_stdio(gateway)))


def run_streamable_http(
    server: Any,
    gateway: Gateway,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    token: str | None = None,
    allowed_hosts: Sequence[str] = (),
    allowed_origins: Sequence[str] = (),
) -> None:
    """Serve ``http://host:port/mcp`` until SIGINT/SIGTERM (blocks). ``token`` defaults to
    ``LOOM_MCP_TOKEN_FILE`` / ``LOOM_MCP_TOKEN``; HttpSecurityError when the bind needs one and has none."""
    _check(server, gateway)
    security = plan_http_security(host, port, token or load_token(None), allowed_hosts, allowed_origins)
    asyncio.run(_serve(gateway, serve_streamable_http(gateway, host, port, security)))
