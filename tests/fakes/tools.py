"""Tool providers for tests, loaded by class path like any user tool."""

from __future__ import annotations

import threading
from typing import Any

from loom.worker.tools import SyncToolProvider, ToolProvider


class Adder(ToolProvider):
    def __init__(self, offset: int = 0):
        self.offset = offset

    def get_definition(self) -> dict[str, Any]:
        return {
            "name": "add",
            "description": "Add two numbers",
            "input_schema": {
                "type": "object",
                "required": ["a", "b"],
                "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            },
        }

    async def execute(self, arguments: dict[str, Any]) -> Any:
        return {"sum": arguments["a"] + arguments["b"] + self.offset}


class ThreadName(SyncToolProvider):
    def get_definition(self) -> dict[str, Any]:
        return {"name": "thread", "description": "Which thread runs me", "parameters": {"type": "object"}}

    def execute_sync(self, arguments: dict[str, Any]) -> str:
        if arguments.get("fail"):
            raise RuntimeError("tool exploded")
        return threading.current_thread().name
