"""DuckDB tools for an LLM worker's tool loop (``knowledge_silos`` entries of ``type: tool``).

``DuckDBViewTool`` searches (ILIKE) and lists a view; ``DuckDBVectorTool`` finds the rows whose
embedding is closest to a query embedded at search time. Both open the file read-only for
each call (a writer elsewhere is seen at the next call) and introspect the columns then.
"""

from __future__ import annotations

import asyncio
from contextlib import closing
from typing import Any

from loom.contrib.duckdb.connection import Column, DuckDBError, columns, connect
from loom.contrib.duckdb.rows import check_vector, row_dict, similarity_sql
from loom.contrib.duckdb.sql import bounded_int, check_identifier, check_identifiers, quote
from loom.contrib.rag.embedders import make_embedding_provider
from loom.worker.embeddings import EmbeddingProvider
from loom.worker.tools import SyncToolProvider, ToolProvider

#: Columns a vector tool leaves out of its results when ``result_columns`` is not given.
HIDDEN_COLUMNS = frozenset({"embedding", "full_text"})


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _definition(name: str, description: str, required: str, properties: dict[str, Any]) -> dict[str, Any]:
    """A tool definition whose input is an object of ``properties`` (nothing else), ``required`` given."""
    return {
        "name": name,
        "description": description,
        "input_schema": {
            "type": "object",
            "required": [required],
            "properties": properties,
            "additionalProperties": False,
        },
    }


class DuckDBViewTool(SyncToolProvider):
    """``search`` (case-insensitive substring over the text columns) and ``list`` over one view or table."""

    def __init__(
        self,
        db_path: str,
        view_name: str,
        description: str = "",
        max_results: int = 20,
        tool_name: str | None = None,
    ):
        if max_results < 1:
            raise ValueError("max_results must be at least 1")
        self.db_path = db_path
        self.view_name = view_name
        self.description = description or f"Search and list rows of {view_name}"
        self.max_results = max_results
        self.tool_name = tool_name or view_name

    def get_definition(self) -> dict[str, Any]:
        return _definition(self.tool_name, self.description, "operation", {
            "operation": {"enum": ["search", "list"], "description": "search (needs query) or list"},
            "query": {"type": "string", "minLength": 1, "description": "text to look for"},
            "column": {"type": "string", "description": "search only this text column"},
            "limit": {"type": "integer", "minimum": 1, "maximum": self.max_results},
            "offset": {"type": "integer", "minimum": 0},
        })

    def execute_sync(self, arguments: dict[str, Any]) -> Any:
        op = arguments.get("operation")
        limit = bounded_int(arguments.get("limit"), "limit", self.max_results, 1, self.max_results)
        offset = bounded_int(arguments.get("offset"), "offset", 0, 0, 10**9)
        with closing(connect(self.db_path, read_only=True, extensions=())) as con:
            cols = columns(con, self.view_name)
            names = [c.name for c in cols]
            select = ", ".join(quote(n) for n in names)
            sql = f"SELECT {select} FROM {quote(self.view_name)}"
            params: list[Any] = []
            if op == "search":
                query = arguments.get("query")
                if not isinstance(query, str) or not query:
                    raise DuckDBError("search needs a non-empty query")
                text_cols = [c.name for c in cols if c.is_text]
                if arguments.get("column") is not None:
                    text_cols = [check_identifier(arguments["column"], text_cols, "text column")]
                if not text_cols:
                    raise DuckDBError(f"{self.view_name} has no text column to search")
                sql += " WHERE " + " OR ".join(f"{quote(c)} ILIKE ? ESCAPE '\\'" for c in text_cols)
                params += [_like_pattern(query)] * len(text_cols)
            elif op != "list":
                raise DuckDBError(f"unknown operation {op!r}; use search or list")
            sql += f" ORDER BY {quote(names[0])} LIMIT ? OFFSET ?"
            rows = con.execute(sql, [*params, limit, offset]).fetchall()
        results = [row_dict(names, r) for r in rows]
        return {"operation": op, "count": len(results), "results": results}


class DuckDBVectorTool(ToolProvider):
    """Rows of a table most similar to a natural-language query (cosine similarity of embeddings)."""

    def __init__(
        self,
        db_path: str,
        table_name: str,
        result_columns: list[str] | None = None,
        embedding_column: str = "embedding",
        tool_name: str = "find_similar",
        description: str = "",
        embedding_model: str | None = None,
        embedding_provider: str = "ollama",
        ollama_url: str | None = None,
        embedding_base_url: str | None = None,
        embedding_api_key_env: str | None = None,
        max_results: int = 10,
        embedder: EmbeddingProvider | None = None,
    ):
        self.db_path = db_path
        self.table_name = table_name
        self.result_columns = list(result_columns) if result_columns else None
        self.embedding_column = embedding_column
        self.tool_name = tool_name
        self.description = description or f"Find rows of {table_name} similar to a query"
        self.max_results = max_results
        self.embedder = embedder or make_embedding_provider(
            embedding_provider, embedding_model, embedding_base_url or ollama_url, embedding_api_key_env
        )

    def get_definition(self) -> dict[str, Any]:
        return _definition(self.tool_name, self.description, "query", {
            "query": {"type": "string", "minLength": 1, "description": "what to look for"},
            "limit": {"type": "integer", "minimum": 1, "maximum": self.max_results},
        })

    async def execute(self, arguments: dict[str, Any]) -> Any:
        query = arguments.get("query")
        if not isinstance(query, str) or not query:
            raise DuckDBError("query must be a non-empty string")
        limit = bounded_int(arguments.get("limit"), "limit", min(5, self.max_results), 1, self.max_results)
        vector = await self.embedder.embed(query)
        return await asyncio.to_thread(self.search, vector, limit)

    def search(self, vector: list[float], limit: int) -> dict[str, Any]:
        """The ``limit`` nearest rows to ``vector`` (blocking)."""
        with closing(connect(self.db_path, read_only=True)) as con:
            cols = {c.name: c for c in columns(con, self.table_name)}
            emb = cols.get(check_identifier(self.embedding_column, cols, "embedding column"))
            assert emb is not None
            similarity, dims = similarity_sql(emb)
            names = self._result_columns(list(cols.values()))
            select = ", ".join(quote(n) for n in names)
            rows = con.execute(
                f"SELECT {select}, {similarity} AS similarity FROM {quote(self.table_name)} "
                f"WHERE {quote(emb.name)} IS NOT NULL ORDER BY similarity DESC LIMIT ?",
                [check_vector(vector, dims), limit],
            ).fetchall()
        results = [row_dict([*names, "similarity"], r) for r in rows]
        return {"count": len(results), "results": results}

    def _result_columns(self, cols: list[Column]) -> list[str]:
        known = [c.name for c in cols]
        if self.result_columns:
            return check_identifiers(self.result_columns, known, "result column")
        return [
            c.name for c in cols
            if c.name not in HIDDEN_COLUMNS and c.name != self.embedding_column and not c.is_vector
        ]

    async def close(self) -> None:
        await self.embedder.close()
