"""Gateway config and tool derivation (pure), and workspace resources on a real directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from loom.api.pipeline import PipelineSpec
from loom.api.worker import WorkerSpec
from loom.core.workspace import WorkspaceError
from loom.mcp.config import (
    GatewayConfigError,
    PipelineToolEntry,
    WorkerToolEntry,
    argument_problems,
    load_gateway,
    parse_config,
    pipeline_tool,
    tool_message_fields,
    worker_tool,
)
from loom.mcp.workspace import Workspace, changed, file_uri, uri_ref


def _write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


LLM_WORKER = {
    "name": "summarizer",
    "system_prompt": "\n  Summarize the text in three sentences.\nMore rules follow.",
    "input_schema": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
}


def test_worker_description_priority_and_schema() -> None:
    spec = WorkerSpec.model_validate(LLM_WORKER)
    tool = worker_tool(WorkerToolEntry(config="x"), spec)
    assert tool.name == "summarizer" and tool.target == "summarizer" and tool.kind == "worker"
    assert tool.description == "Summarize the text in three sentences."
    assert tool.input_schema == LLM_WORKER["input_schema"]
    described = WorkerSpec.model_validate({**LLM_WORKER, "description": "Summaries."})
    assert worker_tool(WorkerToolEntry(config="x"), described).description == "Summaries."
    override = worker_tool(WorkerToolEntry(config="x", name="sum", description="Override"), described)
    assert (override.name, override.description, override.target) == ("sum", "Override", "summarizer")


def test_worker_timeout_covers_every_delivery() -> None:
    spec = WorkerSpec.model_validate({**LLM_WORKER, "timeout_seconds": 10, "max_deliver": 3,
                                      "retry_backoff_seconds": [1, 4]})
    assert worker_tool(WorkerToolEntry(config="x"), spec).timeout_seconds == 10 * 3 + 1 + 4 + 10
    assert worker_tool(WorkerToolEntry(config="x", timeout_seconds=2), spec).timeout_seconds == 2


def test_worker_without_schema_takes_any_object_and_non_object_schema_is_refused() -> None:
    bare = WorkerSpec.model_validate({"name": "p", "worker_kind": "processor",
                                      "processing_backend": "loom.contrib.noop.NoopBackend"})
    tool = worker_tool(WorkerToolEntry(config="x"), bare)
    assert tool.input_schema == {"type": "object"} and tool.description == "Run the Loom worker p."
    arr = WorkerSpec.model_validate({**LLM_WORKER, "input_schema": {"type": "array"}})
    with pytest.raises(ValueError, match="must describe an object"):
        worker_tool(WorkerToolEntry(config="x"), arr)


def test_pipeline_schema_from_goal_context_reads() -> None:
    spec = PipelineSpec.model_validate({
        "name": "analysis",
        "pipeline_stages": [
            {"name": "extract", "worker_type": "doc_extractor",
             "input_mapping": {"file_ref": "goal.context.file_ref", "q": "goal.instruction"}},
            {"name": "classify", "worker_type": "summarizer",
             "input_mapping": {"text": "extract.output.text", "hint": "goal.context.hint"}},
            {"name": "ocr", "worker_type": "ocr", "condition": "goal.context.scanned == true",
             "input_mapping": {"file_ref": "goal.context.file_ref"}},
        ],
    })
    file_ref = {"type": "string", "minLength": 1}
    schemas = {"doc_extractor": {"type": "object", "properties": {"file_ref": file_ref}}}
    tool = pipeline_tool(PipelineToolEntry(config="x", name="ingest"), spec, "analysis", schemas)
    props = tool.input_schema["properties"]
    assert tool.name == "ingest" and tool.target == "analysis" and tool.kind == "pipeline"
    assert set(props) == {"file_ref", "hint", "scanned", "instruction"}
    assert props["file_ref"]["type"] == "string" and props["file_ref"]["minLength"] == 1
    assert "type" not in props["hint"] and "classify.hint" in props["hint"]["description"]
    assert tool.input_schema["required"] == ["file_ref"]  # only the first stages' unconditional reads
    assert tool.instruction_arg == "instruction"
    fields = tool_message_fields(tool, {"file_ref": "a.pdf", "instruction": "go"})
    assert fields == ("go", {"file_ref": "a.pdf"})
    assert tool.description == "Run the Loom pipeline analysis."
    assert tool.timeout_seconds == spec.timeout_seconds + 10


def test_argument_problems() -> None:
    tool = worker_tool(WorkerToolEntry(config="x"), WorkerSpec.model_validate(LLM_WORKER))
    assert argument_problems(tool, {"text": "ok"}) == []
    assert argument_problems(tool, {}) == ["(arguments): 'text' is a required property"]
    assert argument_problems(tool, {"text": 3}) == ["text: 3 is not of type 'string'"]


def test_query_entries_need_actions_and_a_prefix() -> None:
    with pytest.raises(GatewayConfigError) as err:
        parse_config({"name": "g", "tools": {"queries": [{"backend": "loom.contrib.duckdb.X"}]}})
    assert "tools.queries.0.actions" in str(err.value) and "tools.queries.0.name_prefix" in str(err.value)


def test_unknown_keys_and_bad_names_are_named() -> None:
    with pytest.raises(GatewayConfigError) as err:
        workers = [{"config": "w.yaml", "name": "has space"}]
        parse_config({"name": "g", "tools": {"workers": workers}, "extra": 1})
    text = "\n".join(err.value.problems)
    assert "tools.workers.0.name" in text and "extra" in text


def test_load_gateway_with_manifests_relative_paths_and_duplicates(tmp_path: Path) -> None:
    (tmp_path / "workers").mkdir()
    _write(tmp_path / "workers" / "sum.yaml", {
        "apiVersion": "loom.dev/v1alpha1", "kind": "Worker", "metadata": {"name": "summarizer"},
        "spec": {"systemPrompt": "Summarize.", "inputSchema": LLM_WORKER["input_schema"]},
    })
    _write(tmp_path / "pipe.yaml", {"name": "p1", "pipeline_stages": [
        {"name": "s", "worker_type": "summarizer", "input_mapping": {"text": "goal.context.body"}}]})
    (tmp_path / "ws").mkdir()
    gw = _write(tmp_path / "gw.yaml", {
        "name": "g", "nats_url": "nats://example:4222",
        "tools": {"workers": [{"config": "workers/sum.yaml"}], "pipelines": [{"config": "pipe.yaml"}]},
        "resources": {"workspace_dir": "ws"},
    })
    plan = load_gateway(gw)
    assert list(plan.tools) == ["summarizer", "p1"]
    assert plan.tools["p1"].input_schema["properties"]["body"]["type"] == "string"  # from the worker's schema
    assert plan.workspace_dir == tmp_path / "ws" and plan.patterns == ("*",)
    assert plan.config.nats_url == "nats://example:4222"

    dup = _write(tmp_path / "dup.yaml", {"name": "g", "tools": {
        "workers": [{"config": "workers/sum.yaml"}, {"config": "workers/sum.yaml"}],
        "pipelines": [{"config": "missing.yaml", "name": "x"}]},
        "resources": {"workspace_dir": "nope"}})
    with pytest.raises(GatewayConfigError) as err:
        load_gateway(dup)
    text = "\n".join(err.value.problems)
    assert "tools.workers[1]: tool name 'summarizer' is already used" in text
    assert "tools.pipelines[0]" in text and "missing.yaml" in text
    assert "resources.workspace_dir" in text and "is not a directory" in text


def test_load_gateway_reports_invalid_worker_config(tmp_path: Path) -> None:
    _write(tmp_path / "bad.yaml", {"name": "bad", "worker_kind": "processor"})
    gw = _write(tmp_path / "gw.yaml", {"name": "g", "tools": {"workers": [{"config": "bad.yaml"}]}})
    with pytest.raises(GatewayConfigError, match="processor workers need processingBackend"):
        load_gateway(gw)
    empty = _write(tmp_path / "empty.yaml", {"name": "g"})
    with pytest.raises(GatewayConfigError, match="no tools"):
        load_gateway(empty)


def test_workspace_uris_patterns_and_confinement(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "deep file.json").write_text("{}")
    (root / "top.txt").write_bytes(b"\xff\xfe")
    (root / "skip.md").write_text("#")
    (tmp_path / "outside.json").write_text("{}")
    (root / "link.json").symlink_to(tmp_path / "outside.json")
    ws = Workspace(root, ["*.json", "*.txt"])
    assert [f.ref for f in ws.files()] == ["a/b/deep file.json", "top.txt"]
    uri = file_uri("a/b/deep file.json")
    assert uri == "workspace:///a/b/deep%20file.json" and uri_ref(uri) == "a/b/deep file.json"
    assert ws.read(uri) == ("application/json", b"{}")
    for bad in ("workspace:///../outside.json", "workspace:///%2E%2E/outside.json", "workspace:////etc/passwd",
                "workspace:///link.json", "workspace:///skip.md", "workspace://host/top.txt", "http://x/top.txt",
                "workspace:///missing.json", "workspace:///"):
        with pytest.raises(WorkspaceError):
            ws.read(bad)
    before = ws.snapshot()
    (root / "new.txt").write_text("n")
    assert changed(before, ws.snapshot()) == (True, [])
    again = ws.snapshot()
    (root / "top.txt").write_text("longer now")
    assert changed(again, ws.snapshot()) == (False, ["top.txt"])


def test_nats_url_precedence() -> None:
    from loom.cli.commands.mcp import resolve_nats_url

    assert resolve_nats_url("nats://cli:1", "nats://cfg:3", {"LOOM_NATS_URL": "nats://env:2"}) == "nats://cli:1"
    assert resolve_nats_url(None, "nats://cfg:3", {"LOOM_NATS_URL": "nats://env:2"}) == "nats://env:2"
    assert resolve_nats_url(None, "nats://cfg:3", {}) == "nats://cfg:3"
    assert resolve_nats_url(None, None, {}) == "nats://127.0.0.1:4222"


def test_cli_refuses_bad_config_before_connecting(tmp_path: Path) -> None:
    import subprocess
    import sys

    queries = [{"backend": "loom.contrib.noop.NoSuchBackend", "actions": ["get"], "name_prefix": "q"}]
    config = _write(tmp_path / "gw.yaml", {"name": "g", "tools": {"queries": queries}})
    out = subprocess.run([sys.executable, "-m", "loom.cli.main", "mcp", "--config", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "tools.queries[0]" in out.stderr and "NoSuchBackend" in out.stderr
