from __future__ import annotations

import threading

import pytest
from tests.fakes.tools import Adder, ThreadName

from loom.api.worker import KnowledgeSilo
from loom.llm.base import ToolCall
from loom.worker.tools import ToolBox, ToolLoadError


async def test_tools_from_silos_with_config_kwargs() -> None:
    box = ToolBox.from_silos(
        [
            KnowledgeSilo(
                name="calc", type="tool", provider="tests.fakes.tools.Adder", config={"offset": 10}
            ),
            KnowledgeSilo(name="t", type="tool", provider="tests.fakes.tools.ThreadName"),
            KnowledgeSilo(name="docs", type="folder", path="/nowhere"),
        ]
    )
    assert [s.name for s in box.specs] == ["add", "thread"]
    result = await box.call(ToolCall("c1", "add", {"a": 1, "b": 2}))
    assert (result.role, result.content, result.tool_call_id, result.is_error) == (
        "tool",
        '{"sum": 13}',
        "c1",
        False,
    )
    thread = await box.call(ToolCall("c2", "thread", {}))
    assert thread.content.startswith("loom-tool") and thread.content != threading.current_thread().name


async def test_tool_failures_become_error_results() -> None:
    box = ToolBox([Adder(), ThreadName()])
    bad_args = await box.call(ToolCall("c", "add", {"a": "one"}))
    assert (
        bad_args.is_error
        and "invalid arguments" in bad_args.content
        and "'b' is a required" in bad_args.content
    )
    boom = await box.call(ToolCall("c", "thread", {"fail": True}))
    assert boom.is_error and "RuntimeError: tool exploded" in boom.content
    unknown = await box.call(ToolCall("c", "rm_rf", {}))
    assert unknown.is_error and "unknown tool 'rm_rf'" in unknown.content


def test_bad_tool_classes_are_refused() -> None:
    with pytest.raises(ToolLoadError, match="cannot import"):
        ToolBox.from_silos([KnowledgeSilo(name="x", type="tool", provider="no.such.Module")])
    with pytest.raises(ToolLoadError, match="not a ToolProvider"):
        ToolBox.from_silos([KnowledgeSilo(name="x", type="tool", provider="pathlib.Path")])
    with pytest.raises(ToolLoadError, match="failed"):
        ToolBox.from_silos(
            [KnowledgeSilo(name="x", type="tool", provider="tests.fakes.tools.Adder", config={"bad": 1})]
        )
    with pytest.raises(ToolLoadError, match="two tools"):
        ToolBox([Adder(), Adder()])
