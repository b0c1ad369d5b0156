"""Tools an LLM worker's model may call, loaded from ``knowledge_silos`` entries of ``type: tool``.

A tool is a :class:`ToolProvider` (async) or :class:`SyncToolProvider` (blocking
code, run in a shared thread pool so the event loop keeps serving other tasks).
A failing tool does not fail the task: its error goes back to the model as the
tool result, and the model decides what to do next.
"""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from jsonschema import Draft202012Validator

from loom.api.loader import import_object
from loom.api.worker import KnowledgeSilo
from loom.llm.base import Message, ToolCall, ToolSpec

_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="loom-tool")


class ToolLoadError(ValueError):
    """A tool silo names a class that cannot be imported or built, or whose definition is unusable."""


class ToolProvider(ABC):
    """One tool: its definition (name, description, input_schema) and how to run it."""

    @abstractmethod
    def get_definition(self) -> dict[str, Any]:
        """``{"name", "description", "input_schema"}`` (``parameters`` is accepted for the schema)."""

    @abstractmethod
    async def execute(self, arguments: dict[str, Any]) -> Any:
        """Run the tool; a string is passed to the model as is, anything else as JSON."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources at worker shutdown."""


class SyncToolProvider(ToolProvider):
    """A tool with blocking code; ``execute_sync`` runs in a thread pool."""

    @abstractmethod
    def execute_sync(self, arguments: dict[str, Any]) -> Any:
        """Run the tool (blocking is fine here)."""

    async def execute(self, arguments: dict[str, Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(_POOL, self.execute_sync, arguments)


def load_tool(silo: KnowledgeSilo) -> ToolProvider:
    """Instantiate the silo's provider class with its config as keyword arguments."""
    if silo.type != "tool" or not silo.provider:
        raise ToolLoadError(f"silo {silo.name!r} is not a tool silo")
    try:
        cls = import_object(silo.provider)
    except Exception as exc:
        raise ToolLoadError(f"tool silo {silo.name!r}: cannot import {silo.provider}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, ToolProvider)):
        raise ToolLoadError(f"tool silo {silo.name!r}: {silo.provider} is not a ToolProvider subclass")
    try:
        return cls(**silo.config)
    except Exception as exc:
        raise ToolLoadError(f"tool silo {silo.name!r}: {silo.provider}(**config) failed: {exc}") from exc


def _spec(tool: ToolProvider) -> ToolSpec:
    d = tool.get_definition()
    name = d.get("name")
    schema = d.get("input_schema", d.get("parameters", {"type": "object", "properties": {}}))
    if not isinstance(name, str) or not name:
        raise ToolLoadError(f"{type(tool).__name__}.get_definition() has no name")
    if not isinstance(schema, dict):
        raise ToolLoadError(f"tool {name!r}: input_schema must be an object")
    return ToolSpec(name=name, description=str(d.get("description", "")), input_schema=schema)


class ToolBox:
    """The tools of one worker, called by name with checked arguments."""

    def __init__(self, tools: Iterable[ToolProvider]):
        self._tools: dict[str, tuple[ToolProvider, Draft202012Validator]] = {}
        self.specs: list[ToolSpec] = []
        for tool in tools:
            spec = _spec(tool)
            if spec.name in self._tools:
                raise ToolLoadError(f"two tools are named {spec.name!r}")
            self._tools[spec.name] = (tool, Draft202012Validator(spec.input_schema))
            self.specs.append(spec)

    @classmethod
    def from_silos(cls, silos: Iterable[KnowledgeSilo]) -> ToolBox:
        """The tools named by a worker's tool silos."""
        return cls(load_tool(s) for s in silos if s.type == "tool")

    def __bool__(self) -> bool:
        return bool(self._tools)

    async def call(self, call: ToolCall) -> Message:
        """Run one call; every failure becomes an error result for the model."""
        entry = self._tools.get(call.name)
        if entry is None:
            return self._result(
                call, f"error: unknown tool {call.name!r}; available: {sorted(self._tools)}", True
            )
        tool, validator = entry
        problems = [e.message for e in validator.iter_errors(call.arguments)]
        if problems:
            return self._result(call, "error: invalid arguments: " + "; ".join(problems), True)
        try:
            value = await tool.execute(call.arguments)
        except Exception as exc:
            return self._result(call, f"error: {type(exc).__name__}: {exc}", True)
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
        return self._result(call, text, False)

    @staticmethod
    def _result(call: ToolCall, text: str, is_error: bool) -> Message:
        return Message(role="tool", content=text, tool_call_id=call.id, name=call.name, is_error=is_error)

    async def close(self) -> None:
        """Close every tool."""
        for tool, _ in self._tools.values():
            await tool.close()
