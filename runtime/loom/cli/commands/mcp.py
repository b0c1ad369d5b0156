"""``loom mcp --config FILE``: serve Loom workers and pipelines as Model Context Protocol tools.

The NATS URL comes from ``--nats-url``, else ``LOOM_NATS_URL``, else the config's
``nats_url``; against the bus of a ``loom up``, the gateway connects as that run's
identity of the config's ``tenant`` (found in its run dir). With the stdio transport,
stdout carries the protocol, so every log line goes to stderr. Over HTTP, see
:mod:`loom.mcp.http_security`: a bearer token off loopback, Host/Origin allow-lists always.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import TYPE_CHECKING

from loom import tracing
from loom.cli.common import add_local_credentials_option, add_nats_options, explain_refusal, nats_settings
from loom.logs import setup_logging
from loom.settings import NatsSettings

if TYPE_CHECKING:
    from loom.mcp.config import GatewayPlan
    from loom.mcp.http_security import HttpSecurity

NAME = "mcp"
HELP = "Serve workers and pipelines as MCP tools (stdio or streamable HTTP) from one gateway config."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE", help="gateway config (YAML)")
    parser.add_argument("--transport", choices=("stdio", "streamable-http"), default="stdio",
                        help="stdio (default; Claude Desktop, Cursor, ...) or streamable-http")
    parser.add_argument("--host", default="127.0.0.1", help="listen address for streamable-http")
    parser.add_argument("--port", type=int, default=8000, help="listen port for streamable-http")
    parser.add_argument("--token-file", default=os.environ.get("LOOM_MCP_TOKEN_FILE"), metavar="FILE",
                        help="file holding the bearer token clients must send (required off loopback); "
                        "env LOOM_MCP_TOKEN_FILE, or the token itself in env LOOM_MCP_TOKEN")
    parser.add_argument("--allowed-host", action="append", default=_env_list("LOOM_MCP_ALLOWED_HOSTS"),
                        metavar="HOST[:PORT]",
                        help="a Host header value clients use (repeatable; the listen address is always "
                        "allowed; HOST:* for any port); env LOOM_MCP_ALLOWED_HOSTS (comma-separated)")
    parser.add_argument("--allowed-origin", action="append", default=_env_list("LOOM_MCP_ALLOWED_ORIGINS"),
                        metavar="ORIGIN",
                        help="a browser Origin allowed to call the gateway (repeatable; none by default); "
                        "env LOOM_MCP_ALLOWED_ORIGINS (comma-separated)")
    parser.add_argument("--log-level", default=os.environ.get("LOOM_LOG_LEVEL", "WARNING"),
                        help="env LOOM_LOG_LEVEL (default WARNING)")
    json_default = os.environ.get("LOOM_LOG_JSON", "") in ("1", "true")
    parser.add_argument("--log-json", action="store_true", default=json_default, help="env LOOM_LOG_JSON")
    add_nats_options(parser)
    add_local_credentials_option(parser)
    parser.set_defaults(nats_url=None)


def _env_list(name: str) -> list[str]:
    return [v.strip() for v in os.environ.get(name, "").split(",") if v.strip()]


def resolve_nats_url(cli_url: str | None, config_url: str | None, env: dict[str, str] | None = None) -> str:
    """``--nats-url`` beats ``LOOM_NATS_URL``, which beats the config's ``nats_url``."""
    e = os.environ if env is None else env
    return cli_url or e.get("LOOM_NATS_URL") or config_url or NatsSettings.url


def run(args: argparse.Namespace) -> int:
    from loom.mcp.config import GatewayConfigError, load_gateway

    setup_logging(args.log_level, args.log_json)
    tracing.setup("loom-mcp")
    try:
        plan = load_gateway(args.config)
    except GatewayConfigError as exc:
        print("loom mcp: invalid gateway config:\n" + "\n".join(exc.problems), file=sys.stderr)
        return 2
    try:
        import loom.mcp.gateway  # noqa: F401 - the MCP SDK is an install-time dependency; say so when missing
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("mcp"):
            raise
        print(f"loom mcp: the MCP SDK is not installed ({exc}); pip install 'mcp>=2.3,<3'", file=sys.stderr)
        return 2
    security = None
    if args.transport == "streamable-http":
        from loom.mcp.http_security import HttpSecurityError, load_token, plan_http_security

        try:
            token = load_token(args.token_file)
            security = plan_http_security(
                args.host, args.port, token, args.allowed_host, args.allowed_origin
            )
        except HttpSecurityError as exc:
            print(f"loom mcp: {exc}", file=sys.stderr)
            return 2
        if security.warning:
            logging.getLogger("loom.mcp").warning(security.warning)
            print(f"\n*** WARNING: {security.warning} ***\n", file=sys.stderr, flush=True)
    args.nats_url = resolve_nats_url(args.nats_url, plan.config.nats_url)
    settings = nats_settings(args, name=f"loom-mcp-{plan.config.name}")
    from loom.local.credentials import LocalCredentialsError, client_settings

    try:
        settings = client_settings(settings, args.run_dir.resolve(), tenant=plan.config.tenant)
    except LocalCredentialsError as exc:
        print(f"loom mcp: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_main(args, plan, settings, security))


async def _main(
    args: argparse.Namespace, plan: GatewayPlan, settings: NatsSettings, security: HttpSecurity | None
) -> int:
    from loom import __version__
    from loom.bus import Bus, BusAuthError
    from loom.mcp.gateway import Gateway, serve_stdio, serve_streamable_http

    bus: Bus | None = None
    if any(t.kind != "query" for t in plan.tools.values()):  # query tools alone never need NATS
        try:
            bus = await Bus.connect(settings, connect_timeout=30)
        except Exception as exc:  # any connect failure ends the command with its reason
            print(f"loom mcp: cannot reach NATS at {settings.url}: {exc}", file=sys.stderr)
            if isinstance(exc, BusAuthError):
                explain_refusal(args, settings, "loom mcp")
            return 1
    gateway: Gateway | None = None
    try:
        gateway = Gateway(plan, bus, version=__version__)
        tools = ", ".join(plan.tools)
        if args.transport == "stdio":
            print(f"loom mcp: {plan.config.name} on stdio; tools: {tools}", file=sys.stderr)
            await serve_stdio(gateway)
        else:
            def ready(url: str) -> None:
                print(f"loom mcp: {plan.config.name} serving {url}; tools: {tools}", file=sys.stderr,
                      flush=True)

            assert security is not None
            await serve_streamable_http(gateway, args.host, args.port, security, on_ready=ready)
    finally:
        if gateway is not None:
            await gateway.close()  # the query backends
        if bus is not None:
            await bus.close()
    return 0
