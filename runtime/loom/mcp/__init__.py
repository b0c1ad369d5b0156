"""The MCP gateway: Loom workers, pipelines and query backends as Model Context Protocol tools (``loom mcp``).

``config`` holds the pure part (config model, tool derivation), ``workspace`` the
workspace resources, ``gateway`` the MCP server and its NATS calls, ``api`` the
programmatic entry points re-exported here (imported on first use, so reading a
config does not load the MCP SDK).
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_server", "run_stdio", "run_streamable_http"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from loom.mcp import api

        return getattr(api, name)
    raise AttributeError(f"module 'loom.mcp' has no attribute {name!r}")
