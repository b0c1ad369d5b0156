"""The MCP gateway: Loom workers and pipelines as Model Context Protocol tools (``loom mcp``).

``config`` holds the pure part (config model, tool derivation), ``workspace`` the
workspace resources, ``gateway`` the MCP server and its NATS calls.
"""
