"""loom.contrib.duckdb on real DuckDB files with the fts and vss extensions from their packages:
every action of the query backend, both tools, and injection or bad identifiers refused."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import duckdb
import pytest
from tests.fakes.llm_server import FakeLLMServer
from tests.support.duckdb_data import RECORDS, build_records_db, fake_vector
from tests.support.endpoints import loopback_allowed

from loom.contrib.duckdb import DuckDBError, DuckDBQueryBackend, DuckDBVectorTool, DuckDBViewTool, connect
from loom.contrib.duckdb.connection import extension_path
from loom.contrib.duckdb.sql import aggregate_sql, filter_sql, order_by_sql


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return build_records_db(tmp_path / "data.duckdb")


class RecordsBackend(DuckDBQueryBackend):
    """The original guide's subclass, unchanged apart from the path."""

    def __init__(self, db_path: str = "/tmp/workspace/data.duckdb"):
        super().__init__(
            db_path=db_path,
            table_name="records",
            result_columns=["id", "title", "status", "created_at"],
            json_columns={"tags"},
            filter_fields={"status": "status = ?", "min_score": "score >= ?"},
            stats_groups={"status"},
            stats_aggregates=["COUNT(*) AS record_count", "ROUND(AVG(score), 2) AS avg_score"],
            default_order_by="created_at DESC",
        )


def test_extensions_come_from_the_installed_packages() -> None:
    for name in ("fts", "vss"):
        path = extension_path(name)
        assert path.is_file() and f"v{duckdb.__version__}" in str(path)
    con = connect(":memory:", read_only=False)
    try:
        loaded = dict(con.execute(
            "SELECT extension_name, loaded FROM duckdb_extensions() WHERE extension_name IN ('fts', 'vss')"
        ).fetchall())
    finally:
        con.close()
    assert loaded == {"fts": True, "vss": True}


def test_search_ranks_by_bm25(db: Path) -> None:
    out = RecordsBackend(str(db)).query({"action": "search", "query": "yeast starter"})
    assert [r["id"] for r in out["results"]] == ["r4"]
    assert out["results"][0]["score"] > 0 and set(out["results"][0]) == {
        "id", "title", "status", "created_at", "score"
    }
    filtered = RecordsBackend(str(db)).query({"action": "search", "query": "grind", "status": "open"})
    assert filtered["results"] == []


def test_filter_with_fields_order_and_paging(db: Path) -> None:
    backend = RecordsBackend(str(db))
    out = backend.query({"action": "filter", "status": "open", "min_score": 5})
    assert [r["id"] for r in out["results"]] == ["r3", "r1"]  # created_at DESC
    assert out["results"][0]["created_at"] == "2024-02-01"
    page = backend.query({"action": "filter", "order_by": "id ASC", "limit": 2, "offset": 1})
    assert [r["id"] for r in page["results"]] == ["r2", "r3"]


def test_stats_overall_and_grouped(db: Path) -> None:
    backend = RecordsBackend(str(db))
    overall = backend.query({"action": "stats"})
    assert overall["stats"] == {"record_count": 5, "avg_score": 7.0}
    grouped = backend.query({"action": "stats", "group_by": "status", "min_score": 5})
    assert grouped["groups"] == [
        {"status": "closed", "record_count": 2, "avg_score": 6.5},
        {"status": "open", "record_count": 2, "avg_score": 8.75},
    ]


def test_get_and_json_columns(db: Path) -> None:
    backend = DuckDBQueryBackend(str(db), table_name="records", json_columns=["tags"])
    out = backend.query({"action": "get", "id": "r2"})
    assert out["found"] and out["result"]["tags"] == ["lang", "ops"]
    assert "embedding" not in out["result"]  # vectors are not results unless asked for
    assert backend.query({"action": "get", "id": "nope"}) == {"action": "get", "found": False, "result": None}


async def test_vector_search_by_embedding_and_by_query(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = RecordsBackend(str(db))
    vector = fake_vector("Espresso extraction")
    out = backend.query({"action": "vector_search", "embedding": vector, "limit": 2})
    assert out["results"][0]["id"] == "r5" and out["results"][0]["similarity"] == pytest.approx(1.0)
    async with FakeLLMServer("ollama", dimensions=8) as fake:
        for name, value in loopback_allowed(fake.url).items():  # the embedding endpoint is on the allow-list
            monkeypatch.setenv(name, value)
        embedded = DuckDBQueryBackend(
            str(db), table_name="records", embedding_provider="ollama", embedding_model="m",
            embedding_base_url=fake.url,
        )
        result = await embedded.process({"action": "vector_search", "query": "Sourdough bread"}, {})
        await embedded.close()
    assert result["output"]["results"][0]["id"] == "r4"
    assert fake.requests[0]["input"] == ["Sourdough bread"]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"action": "drop"}, "unknown action 'drop'"),
        ({"action": "filter", "status": "open' OR 1=1 --"}, None),  # a value: matches nothing, harms nothing
        ({"action": "filter", "order_by": "id; DROP TABLE records"}, "order by"),
        ({"action": "filter", "order_by": "(SELECT 1)"}, "order by"),
        ({"action": "filter", "order_by": "secret DESC"}, "unknown order-by column 'secret'"),
        ({"action": "stats", "group_by": "title"}, "unknown stats group 'title'"),
        ({"action": "filter", "1=1 OR status": "x"}, "unknown field(s)"),
        ({"action": "filter", "limit": 10**6}, "limit must be between 1 and 100"),
        ({"action": "filter", "status": ["open", "closed"]}, "takes one value"),
        ({"action": "get"}, "get needs id"),
        ({"action": "search", "query": ""}, "non-empty query"),
        ({"action": "vector_search", "embedding": [1.0, 2.0]}, "2 dimensions, the column has 8"),
    ],
)
def test_bad_payloads_are_refused_with_a_clear_error(
    db: Path, payload: dict[str, Any], message: str | None
) -> None:
    backend = RecordsBackend(str(db))
    if message is None:
        assert backend.query(payload)["results"] == []
    else:
        with pytest.raises(DuckDBError, match=re.escape(message)):
            backend.query(payload)
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM records").fetchone() == (len(RECORDS),)
    con.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"table_name": "records; DROP TABLE records"}, "no table or view"),
        ({"table_name": "records", "result_columns": ["id", "password"]}, "unknown result column 'password'"),
        ({"table_name": "records", "filter_fields": {"s": "status = ? OR 1=1"}}, "must be 'column OP ?'"),
        ({"table_name": "records", "filter_fields": {"s": "nope = ?"}}, "unknown filter column 'nope'"),
        ({"table_name": "records", "stats_aggregates": ["read_csv('/etc/passwd') AS x"]}, "not allowed"),
        ({"table_name": "records", "stats_aggregates": ["COUNT(*); DROP TABLE records AS x"]}, "not allowed"),
        ({"table_name": "records", "default_order_by": "score DESC; --"}, "order by"),
    ],
)
def test_bad_configuration_is_refused_at_the_first_call(
    db: Path, kwargs: dict[str, Any], message: str
) -> None:
    backend = DuckDBQueryBackend(str(db), **kwargs)
    with pytest.raises(DuckDBError, match=re.escape(message)):
        backend.query({"action": "filter"})


def test_connections_only_read(db: Path) -> None:
    con = connect(db, read_only=True)
    with pytest.raises(duckdb.Error, match="read-only"):
        con.execute("DELETE FROM records")
    con.close()
    with pytest.raises(DuckDBError, match="does not exist"):
        DuckDBQueryBackend(str(db.parent / "missing.duckdb")).query({"action": "filter"})


def test_sql_checks_are_pure() -> None:
    cols = ["id", "score", "status"]
    assert filter_sql("score >= ?", cols) == '"score" >= ?'
    assert order_by_sql("score desc, id", cols) == '"score" DESC, "id" ASC'
    assert aggregate_sql("ROUND(AVG(score), 2) AS avg_score", cols) == (
        'ROUND(AVG("score"),2) AS "avg_score"', "avg_score"
    )
    assert aggregate_sql("COUNT(DISTINCT status) AS n", cols)[0] == 'COUNT(DISTINCT "status") AS "n"'
    for bad in ["score >= ? --", "score >= 1", "lower(status) = ?"]:
        with pytest.raises(DuckDBError):
            filter_sql(bad, cols)


async def test_view_tool_search_and_list(db: Path) -> None:
    tool = DuckDBViewTool(db_path=str(db), view_name="summaries", description="Search summaries",
                          max_results=3)
    found = await tool.execute({"operation": "search", "query": "RECONCILE"})
    assert [r["id"] for r in found["results"]] == ["r3"]
    assert set(found["results"][0]) == {"id", "title", "summary", "status"}
    listed = await tool.execute({"operation": "list"})
    assert [r["id"] for r in listed["results"]] == ["r1", "r2", "r3"]  # max_results
    literal = await tool.execute({"operation": "search", "query": "%"})  # a wildcard is a literal here
    assert literal["results"] == []
    with pytest.raises(DuckDBError, match="unknown text column"):
        await tool.execute({"operation": "search", "query": "x", "column": "status OR 1=1"})


async def test_vector_tool_introspects_result_columns(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with FakeLLMServer("ollama", dimensions=8) as fake:
        for name, value in loopback_allowed(fake.url).items():
            monkeypatch.setenv(name, value)
        tool = DuckDBVectorTool(db_path=str(db), table_name="records", embedding_model="nomic-embed-text",
                                ollama_url=fake.url)
        out = await tool.execute({"query": "Kubernetes operators", "limit": 1})
        await tool.close()
    assert out["results"][0]["id"] == "r3"
    assert "embedding" not in out["results"][0] and "full_text" not in out["results"][0]
    assert {"id", "title", "summary", "similarity"} <= set(out["results"][0])
