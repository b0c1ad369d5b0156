"""The original guide's Part 12 gateway config (workers, pipelines and DuckDB queries), unchanged apart
from paths, served by ``loom mcp`` over streamable HTTP and by the programmatic API over stdio; the MCP
SDK's own client lists the query tools with their generated schemas and calls them on a real file."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import mcp_types as types
import pytest
import yaml
from mcp import Client, StdioServerParameters
from tests.support.duckdb_data import build_records_db
from tests.support.mcp_gateway import Gateway

from loom.mcp.config import GatewayConfigError, load_gateway

pytestmark = pytest.mark.integration

PART_12 = """
name: "my_server"
description: "My LOOM system as an MCP server"
nats_url: "nats://localhost:4222"

tools:
  workers:
    - config: "configs/workers/summarizer.yaml"
    - config: "configs/workers/classifier.yaml"
      name: "classify_document"           # optional name override
      description: "Classify a document"  # optional description override

  pipelines:
    - config: "configs/orchestrators/rag_pipeline.yaml"
      name: "ingest_document"             # required (pipeline has no natural name)
      description: "Ingest and vectorize a document"

  queries:
    - backend: "loom.contrib.duckdb.query_backend.DuckDBQueryBackend"
      actions: ["search", "filter", "stats", "get"]
      name_prefix: "docs"                # → docs_search, docs_filter, etc.
      backend_config:
        db_path: "/tmp/workspace/data.duckdb"
        table_name: "documents"
        result_columns: ["id", "title", "summary"]

resources:
  workspace_dir: "/tmp/workspace"
  patterns: ["*.pdf", "*.json"]           # optional glob filter
"""
TEXT_IN = {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}


def _project(tmp: Path) -> Path:
    """A project laid out as the guide's: configs/ under the working directory, a workspace with the
    DuckDB file (a ``documents`` table with a full-text index)."""
    workers = tmp / "configs" / "workers"
    workers.mkdir(parents=True)
    (tmp / "configs" / "orchestrators").mkdir()
    (tmp / "configs" / "mcp").mkdir()
    for name in ("summarizer", "classifier"):
        (workers / f"{name}.yaml").write_text(yaml.safe_dump({
            "name": name, "system_prompt": f"You are a {name}.\nBe brief.", "input_schema": TEXT_IN,
            "output_schema": {"type": "object"},
        }))
    (tmp / "configs" / "orchestrators" / "rag_pipeline.yaml").write_text(yaml.safe_dump({
        "name": "rag_pipeline", "pipeline_stages": [
            {"name": "summarize", "worker_type": "summarizer",
             "input_mapping": {"text": "goal.context.text"}},
        ],
    }))
    workspace = tmp / "workspace"
    workspace.mkdir()
    db = build_records_db(workspace / "data.duckdb")
    import duckdb

    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE documents AS SELECT id, title, summary, status FROM records")
    con.close()
    from loom.contrib.duckdb import connect

    con = connect(db, read_only=False)
    con.execute("PRAGMA create_fts_index('documents', 'id', 'title', 'summary')")
    con.close()
    gateway = tmp / "configs" / "mcp" / "my_server.yaml"
    gateway.write_text(PART_12.replace("/tmp/workspace", str(workspace)))
    return gateway


def _text(result: types.CallToolResult) -> str:
    assert len(result.content) == 1 and isinstance(result.content[0], types.TextContent)
    return result.content[0].text


async def _exercise(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == {"summarizer", "classify_document", "ingest_document",
                          "docs_search", "docs_filter", "docs_stats", "docs_get"}
    assert tools["docs_search"].input_schema["required"] == ["query"]
    assert tools["docs_get"].input_schema["required"] == ["id"]
    found = await client.call_tool("docs_search", {"query": "espresso grind"})
    assert not found.is_error, _text(found)
    rows = json.loads(_text(found))["results"]
    assert [r["id"] for r in rows] == ["r5"] and set(rows[0]) == {"id", "title", "summary", "score"}
    got = await client.call_tool("docs_get", {"id": "r3"})
    assert json.loads(_text(got))["result"]["title"] == "Kubernetes operators"
    stats = await client.call_tool("docs_stats", {})
    assert json.loads(_text(stats))["stats"] == {"count": 5}
    listed = await client.call_tool("docs_filter", {"order_by": "title DESC", "limit": 2})
    assert [r["id"] for r in json.loads(_text(listed))["results"]] == ["r4", "r1"]
    bad = await client.call_tool("docs_filter", {"order_by": "title; DROP TABLE documents"})
    assert bad.is_error and "order by" in _text(bad)
    refused = await client.call_tool("docs_get", {"id": "r1", "extra": "x"})
    assert refused.is_error and "extra" in _text(refused)


async def test_part_12_over_streamable_http(
    tmp_path: Path, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway_config = _project(tmp_path)
    monkeypatch.chdir(tmp_path)  # the guide's relative configs/ paths resolve from the working directory
    gateway = Gateway(gateway_config, nats_url, "127.0.0.1")
    try:
        gateway.wait_ready()
        async with Client(gateway.url) as client:
            await _exercise(client)
    finally:
        gateway.stop()


async def test_part_12_over_stdio_with_the_programmatic_api(tmp_path: Path) -> None:
    gateway_config = _project(tmp_path)
    script = textwrap.dedent(f"""
        from loom.mcp import create_server, run_stdio

        server, gateway = create_server({str(gateway_config)!r})
        run_stdio(server, gateway)
    """)
    params = StdioServerParameters(command=sys.executable, args=["-c", script], cwd=str(tmp_path),
                                   env=dict(os.environ))
    async with Client(params) as client:
        await _exercise(client)


def test_unknown_action_fails_at_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gateway_config = _project(tmp_path)
    doc = yaml.safe_load(gateway_config.read_text())
    doc["tools"]["queries"][0]["actions"] = ["search", "delete"]
    gateway_config.write_text(yaml.safe_dump(doc))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GatewayConfigError, match=r"tools.queries\[0\]: unknown action 'delete'"):
        load_gateway(gateway_config)


async def test_loom_mcp_with_query_tools_only_needs_no_nats(tmp_path: Path) -> None:
    gateway_config = _project(tmp_path)
    doc = yaml.safe_load(gateway_config.read_text())
    doc["tools"] = {"queries": doc["tools"]["queries"]}
    doc["nats_url"] = "nats://127.0.0.1:1"  # nothing listens there
    gateway_config.write_text(yaml.safe_dump(doc))
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "loom.cli.main", "mcp", "--config", str(gateway_config)],
        env={k: v for k, v in os.environ.items() if k != "LOOM_NATS_URL"},
    )
    async with Client(params) as client:
        assert {t.name for t in (await client.list_tools()).tools} == {
            "docs_search", "docs_filter", "docs_stats", "docs_get"
        }
        got = await client.call_tool("docs_get", {"id": "r4"})
        assert json.loads(_text(got))["result"]["title"] == "Sourdough bread"
