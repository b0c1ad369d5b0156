"""``DuckDBQueryBackend``: one processor backend, five query actions over a DuckDB table.

A payload names its ``action``:

- ``search``: BM25 ranking through DuckDB's full-text index (``query``; filters allowed);
- ``filter``: rows matching the configured ``filter_fields`` given in the payload;
- ``stats``: ``stats_aggregates`` over the table, optionally grouped by one of ``stats_groups``;
- ``get``: one row by ``id``;
- ``vector_search``: nearest rows to ``embedding`` (a vector) or ``query`` (text, embedded here).

Subclass it to fix a schema's defaults (as in the original Loom). The configuration is checked
against the table's real columns at the first call; payload values only ever travel as
parameters. The file is opened read-only for each call.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from loom.backends import SyncProcessingBackend
from loom.contrib.duckdb.connection import DuckDBError, columns, connect, has_fts_index
from loom.contrib.duckdb.rows import check_vector, row_dict, similarity_sql
from loom.contrib.duckdb.sql import (
    aggregate_sql,
    bounded_int,
    check_identifier,
    check_identifiers,
    filter_sql,
    order_by_sql,
    quote,
)
from loom.contrib.rag.embedders import LazyEmbedding
from loom.worker.embeddings import EmbeddingProvider

ACTIONS = ("search", "filter", "stats", "get", "vector_search")
_SCALAR = {"type": ["string", "number", "integer", "boolean"]}


@dataclass(frozen=True)
class _Plan:
    """The configuration checked against the table: quoted SQL pieces, ready to use."""

    columns: dict[str, Any]
    select: list[str]
    select_sql: str
    filters: dict[str, str]
    aggregates: list[str]
    order_by: str | None


class DuckDBQueryBackend(LazyEmbedding, SyncProcessingBackend):
    """Configurable query actions against one table (see the module docstring)."""

    def __init__(
        self,
        db_path: str,
        table_name: str = "documents",
        id_column: str = "id",
        result_columns: list[str] | None = None,
        json_columns: Iterable[str] | None = None,
        filter_fields: Mapping[str, str] | None = None,
        stats_groups: Iterable[str] | None = None,
        stats_aggregates: list[str] | None = None,
        default_order_by: str | None = None,
        embedding_column: str = "embedding",
        embedding_model: str | None = None,
        embedding_provider: str = "offline",
        embedding_base_url: str | None = None,
        embedding_api_key_env: str | None = None,
        max_results: int = 100,
        default_limit: int = 20,
        embedder: EmbeddingProvider | None = None,
    ):
        super().__init__(
            embedding_provider, embedding_model, embedding_base_url, embedding_api_key_env, embedder
        )
        self.db_path = db_path
        self.table_name = table_name
        self.id_column = id_column
        self.result_columns = list(result_columns) if result_columns else None
        self.json_columns = set(json_columns or ())
        self.filter_fields = dict(filter_fields or {})
        self.stats_groups = sorted(set(stats_groups or ()))
        self.stats_aggregates = list(stats_aggregates or ["COUNT(*) AS count"])
        self.default_order_by = default_order_by
        self.embedding_column = embedding_column
        self.max_results = max_results
        self.default_limit = min(default_limit, max_results)
        self._plan: _Plan | None = None
        self._plan_lock = threading.Lock()
        reserved = {"action", "query", "limit", "offset", "id", "group_by", "embedding", "order_by"}
        clash = sorted(reserved & set(self.filter_fields))
        if clash:
            raise ValueError(f"filter_fields may not be named {clash}: those are payload keys of the actions")

    # -- schema for tools (MCP) ---------------------------------------------------------------------------

    def action_schema(self, action: str) -> dict[str, Any]:
        """The JSON Schema of one action's payload (without ``action``), from the configuration."""
        limit = {"type": "integer", "minimum": 1, "maximum": self.max_results}
        filters = {
            name: dict(_SCALAR, description=f"filter: {frag}") for name, frag in self.filter_fields.items()
        }
        props: dict[str, Any]
        required: list[str] = []
        if action == "search":
            props = {"query": {"type": "string", "minLength": 1, "description": "full-text query (BM25)"},
                     "limit": limit, **filters}
            required = ["query"]
        elif action == "filter":
            props = {**filters, "limit": limit, "offset": {"type": "integer", "minimum": 0},
                     "order_by": {"type": "string", "description": "column [ASC|DESC]"}}
        elif action == "stats":
            props = dict(filters)
            if self.stats_groups:
                props["group_by"] = {"enum": self.stats_groups, "description": "group the statistics by"}
        elif action == "get":
            props = {"id": dict(_SCALAR, description=f"the record's {self.id_column}")}
            required = ["id"]
        elif action == "vector_search":
            query = {"type": "string", "minLength": 1, "description": "text to find similar rows to"}
            props = {"query": query, "limit": limit, **filters}
            required = ["query"]
        else:
            raise DuckDBError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
        schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
        if required:
            schema["required"] = required
        return schema

    # -- processing ---------------------------------------------------------------------------------------

    async def process(self, payload: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        """Embed a ``vector_search`` query text here (async), then run the query in the thread pool."""
        if payload.get("action") == "vector_search" and "embedding" not in payload:
            query = payload.get("query")
            if not isinstance(query, str) or not query:
                raise DuckDBError("vector_search needs query (text) or embedding (a vector)")
            payload = {**payload, "embedding": await self.embedder.embed(query)}
        return await super().process(payload, config)

    def process_sync(self, payload: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        action = payload.get("action")
        if action not in ACTIONS:
            raise DuckDBError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
        with closing(connect(self.db_path, read_only=True)) as con:
            plan = self._checked_plan(con)
            output = getattr(self, f"_{action}")(con, plan, payload)
        return {"output": {"action": action, **output}, "model_used": "duckdb"}

    def query(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Run one payload synchronously and return its output (for scripts and tests)."""
        return self.process_sync(payload, {})["output"]

    # -- the checked configuration ------------------------------------------------------------------------

    def _checked_plan(self, con: Any) -> _Plan:
        with self._plan_lock:
            if self._plan is None:
                cols = {c.name: c for c in columns(con, self.table_name)}
                known = list(cols)
                check_identifier(self.id_column, known, "id column")
                if self.result_columns:
                    select = check_identifiers(self.result_columns, known, "result column")
                else:
                    select = [n for n, c in cols.items() if not c.is_vector and n != self.embedding_column]
                check_identifiers(self.json_columns, known, "json column")
                check_identifiers(self.stats_groups, known, "stats group")
                filters = {name: filter_sql(frag, known) for name, frag in self.filter_fields.items()}
                aggregates = [aggregate_sql(a, known)[0] for a in self.stats_aggregates]
                order = order_by_sql(self.default_order_by, known) if self.default_order_by else None
                select_sql = ", ".join(quote(c) for c in select)
                self._plan = _Plan(cols, select, select_sql, filters, aggregates, order)
            return self._plan

    def _where(self, plan: _Plan, payload: dict[str, Any], *required: str) -> tuple[str, list[Any]]:
        """`` WHERE`` with the ``required`` clauses and the payload's filters ('' without any), and its
        parameters."""
        clauses, params = list(required), []
        for name, sql in plan.filters.items():
            if name in payload and payload[name] is not None:
                value = payload[name]
                if isinstance(value, dict | list):
                    raise DuckDBError(f"filter {name!r} takes one value, not {type(value).__name__}")
                clauses.append(sql)
                params.append(value)
        return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), params

    def _unknown_keys(self, payload: dict[str, Any], allowed: set[str]) -> None:
        extra = sorted(set(payload) - allowed - {"action"} - set(self.filter_fields))
        if extra:
            raise DuckDBError(f"unknown field(s) {extra}; filter fields: {sorted(self.filter_fields)}")

    def _limit(self, payload: dict[str, Any]) -> int:
        return bounded_int(payload.get("limit"), "limit", self.default_limit, 1, self.max_results)

    def _rows(self, con: Any, sql: str, params: list[Any], names: list[str]) -> list[dict[str, Any]]:
        return [row_dict(names, r, self.json_columns) for r in con.execute(sql, params).fetchall()]

    # -- actions ------------------------------------------------------------------------------------------

    def _search(self, con: Any, plan: _Plan, payload: dict[str, Any]) -> dict[str, Any]:
        self._unknown_keys(payload, {"query", "limit"})
        query = payload.get("query")
        if not isinstance(query, str) or not query.strip():
            raise DuckDBError("search needs a non-empty query")
        if not has_fts_index(con, self.table_name):
            raise DuckDBError(
                f"{self.table_name} has no full-text index; create it with "
                f"PRAGMA create_fts_index('{self.table_name}', '{self.id_column}', <text columns>)"
            )
        where, params = self._where(plan, payload, "score IS NOT NULL")
        fts = quote(f"fts_main_{self.table_name}")
        score = f"{fts}.match_bm25({quote(self.id_column)}, ?)"
        sql = (f"SELECT * FROM (SELECT {plan.select_sql}, {score} AS score FROM {quote(self.table_name)})"
               f"{where} ORDER BY score DESC LIMIT ?")
        results = self._rows(con, sql, [query, *params, self._limit(payload)], [*plan.select, "score"])
        return {"count": len(results), "results": results}

    def _filter(self, con: Any, plan: _Plan, payload: dict[str, Any]) -> dict[str, Any]:
        self._unknown_keys(payload, {"limit", "offset", "order_by"})
        where, params = self._where(plan, payload)
        if isinstance(payload.get("order_by"), str):
            order = order_by_sql(payload["order_by"], list(plan.columns))
        elif payload.get("order_by") is not None:
            raise DuckDBError("order_by must be a string: 'column [ASC|DESC]'")
        else:
            order = plan.order_by or quote(self.id_column)
        offset = bounded_int(payload.get("offset"), "offset", 0, 0, 10**9)
        table = quote(self.table_name)
        sql = f"SELECT {plan.select_sql} FROM {table}{where} ORDER BY {order} LIMIT ? OFFSET ?"
        results = self._rows(con, sql, [*params, self._limit(payload), offset], plan.select)
        return {"count": len(results), "results": results}

    def _stats(self, con: Any, plan: _Plan, payload: dict[str, Any]) -> dict[str, Any]:
        self._unknown_keys(payload, {"group_by"})
        where, params = self._where(plan, payload)
        aggs = ", ".join(plan.aggregates)
        group = payload.get("group_by")
        if group is None:
            cur = con.execute(f"SELECT {aggs} FROM {quote(self.table_name)}{where}", params)
            return {"stats": row_dict([d[0] for d in cur.description], cur.fetchone())}
        group = check_identifier(group, self.stats_groups, "stats group")
        g = quote(group)
        cur = con.execute(
            f"SELECT {g}, {aggs} FROM {quote(self.table_name)}{where} GROUP BY {g} ORDER BY {g}", params
        )
        names = [d[0] for d in cur.description]
        return {"group_by": group, "groups": [row_dict(names, r) for r in cur.fetchall()]}

    def _get(self, con: Any, plan: _Plan, payload: dict[str, Any]) -> dict[str, Any]:
        self._unknown_keys(payload, {"id"})
        if payload.get("id") is None or isinstance(payload["id"], dict | list):
            raise DuckDBError(f"get needs id (the record's {self.id_column})")
        sql = (f"SELECT {plan.select_sql} FROM {quote(self.table_name)} "
               f"WHERE {quote(self.id_column)} = ? LIMIT 1")
        rows = self._rows(con, sql, [payload["id"]], plan.select)
        return {"found": bool(rows), "result": rows[0] if rows else None}

    def _vector_search(self, con: Any, plan: _Plan, payload: dict[str, Any]) -> dict[str, Any]:
        self._unknown_keys(payload, {"query", "embedding", "limit"})
        column = plan.columns.get(check_identifier(self.embedding_column, plan.columns, "embedding column"))
        assert column is not None
        similarity, dims = similarity_sql(column)
        vector = check_vector(payload.get("embedding"), dims)
        where, params = self._where(plan, payload, f"{quote(column.name)} IS NOT NULL")
        sql = (f"SELECT {plan.select_sql}, {similarity} AS similarity FROM {quote(self.table_name)}"
               f"{where} ORDER BY similarity DESC LIMIT ?")
        results = self._rows(con, sql, [vector, *params, self._limit(payload)], [*plan.select, "similarity"])
        return {"count": len(results), "results": results}
