"""The chunk table in DuckDB: one row per chunk with its embedding, a full-text index over the text
and an HNSW vector index (the vss extension), all built from the packaged extensions.

Timestamps are stored as UTC without a zone (DuckDB's zoned type would need pytz in the reader).
Writes go through one read-write connection (``RagStore`` as a context manager); searches open
the file read-only. The same text is stored once: ``content_hash`` is unique.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from loom.contrib.duckdb.connection import DuckDBError, connect, has_fts_index
from loom.contrib.duckdb.rows import row_dict
from loom.contrib.rag.chunking import Chunk

TABLE = "chunks"
#: One row per ingest: when, with which embedding model, what it added (what ``stats`` reports).
INGESTS = "ingests"
RESULT_COLUMNS = ["chunk_id", "doc_id", "source", "author", "timestamp", "position", "title", "text"]


def schema_sql(dims: int) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {TABLE} (chunk_id VARCHAR PRIMARY KEY, content_hash VARCHAR UNIQUE, "
        "doc_id VARCHAR NOT NULL, source VARCHAR, author VARCHAR, timestamp TIMESTAMP, position INTEGER, "
        f"title VARCHAR, text VARCHAR NOT NULL, metadata VARCHAR, embedding FLOAT[{dims}] NOT NULL)"
    )


def ingests_sql() -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {INGESTS} (ingested_at TIMESTAMP NOT NULL, embedding_model VARCHAR, "
        "documents INTEGER, chunks INTEGER, added INTEGER, duplicates INTEGER)"
    )


def utc_naive(value: dt.datetime | None) -> dt.datetime | None:
    """An aware datetime as naive UTC (how the table stores time)."""
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(dt.UTC).replace(tzinfo=None)


def _embedding_type(con: Any) -> str | None:
    row = con.execute(
        "SELECT data_type FROM information_schema.columns "
        "WHERE table_name = ? AND column_name = 'embedding' AND table_schema = 'main'",
        [TABLE],
    ).fetchone()
    return str(row[0]) if row else None


class RagStore:
    """A writable chunk store (open it with ``with RagStore(path, dims) as store:``)."""

    def __init__(self, db_path: str | Path, dims: int):
        if dims < 1:
            raise ValueError("dims must be positive")
        self.db_path = Path(db_path)
        self.dims = dims
        self._con: Any = None

    def __enter__(self) -> RagStore:
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._con = connect(self.db_path, read_only=False)
        self._con.execute(schema_sql(self.dims))
        self._con.execute(ingests_sql())
        kind = _embedding_type(self._con)
        if kind != f"FLOAT[{self.dims}]":
            self.close()
            raise DuckDBError(
                f"{self.db_path} holds {kind} embeddings, this embedder makes FLOAT[{self.dims}]: "
                "use a new file or the same embedding model"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def known_hashes(self) -> set[str]:
        """Content hashes already stored (for de-duplication before embedding)."""
        return {r[0] for r in self._con.execute(f"SELECT content_hash FROM {TABLE}").fetchall()}

    def add(self, chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]]) -> int:
        """Insert chunks with their vectors in one transaction; returns how many were new."""
        if len(chunks) != len(vectors):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        rows = []
        for c, v in zip(chunks, vectors, strict=True):
            if len(v) != self.dims:
                raise DuckDBError(f"embedding of {c.chunk_id} has {len(v)} dimensions, not {self.dims}")
            d = c.doc
            rows.append([c.chunk_id, c.content_hash, d.id, d.source, d.author, utc_naive(d.timestamp),
                         c.position, d.title, c.text, json.dumps(d.metadata, default=str), list(v)])
        if not rows:
            return 0
        before = self.count()
        self._con.execute("BEGIN")
        try:
            self._con.executemany(
                f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", rows
            )
            self._con.execute("COMMIT")
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        return self.count() - before

    def record_ingest(
        self, embedding_model: str, documents: int, chunks: int, added: int, duplicates: int
    ) -> None:
        """Note one ingest (its time now, UTC) so ``stats`` can say when and with which model."""
        self._con.execute(
            f"INSERT INTO {INGESTS} VALUES (?, ?, ?, ?, ?, ?)",
            [utc_naive(dt.datetime.now(dt.UTC)), embedding_model, documents, chunks, added, duplicates],
        )

    def count(self) -> int:
        row = self._con.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
        return int(row[0]) if row else 0

    def build_indexes(self) -> None:
        """(Re)build the full-text index over title and text, and the HNSW cosine index on embeddings."""
        self._con.execute(f"PRAGMA create_fts_index('{TABLE}', 'chunk_id', 'title', 'text', overwrite=1)")
        self._con.execute("SET hnsw_enable_experimental_persistence = true")
        self._con.execute(f"DROP INDEX IF EXISTS {TABLE}_embedding_hnsw")
        self._con.execute(
            f"CREATE INDEX {TABLE}_embedding_hnsw ON {TABLE} USING HNSW (embedding) WITH (metric = 'cosine')"
        )


def nearest(db_path: str | Path, vector: Sequence[float], k: int) -> list[dict[str, Any]]:
    """The ``k`` chunks nearest to ``vector`` by cosine similarity (read-only)."""
    with closing(connect(db_path, read_only=True)) as con:
        kind = _embedding_type(con)
        if kind is None:
            raise DuckDBError(f"{db_path} has no {TABLE} table: ingest something first")
        dims = int(kind.removeprefix("FLOAT[").removesuffix("]"))
        if len(vector) != dims:
            raise DuckDBError(f"the query embedding has {len(vector)} dimensions, the store {dims}")
        cols = ", ".join(RESULT_COLUMNS)
        vec = f"?::FLOAT[{dims}]"
        rows = con.execute(  # ORDER BY the distance so the HNSW index can serve the top k
            f"SELECT {cols}, array_cosine_similarity(embedding, {vec}) AS score FROM {TABLE} "
            f"ORDER BY array_cosine_distance(embedding, {vec}) LIMIT ?",
            [list(vector), list(vector), k],
        ).fetchall()
    return [row_dict([*RESULT_COLUMNS, "score"], r) for r in rows]


def window(db_path: str | Path, since: dt.datetime, until: dt.datetime, limit: int) -> list[dict[str, Any]]:
    """Chunks with ``since <= timestamp < until``, oldest first (a stream window to summarise)."""
    with closing(connect(db_path, read_only=True, extensions=())) as con:
        cols = ", ".join(RESULT_COLUMNS)
        rows = con.execute(
            f"SELECT {cols} FROM {TABLE} WHERE timestamp >= ? AND timestamp < ? "
            "ORDER BY timestamp, chunk_id LIMIT ?",
            [utc_naive(since), utc_naive(until), limit],
        ).fetchall()
    return [row_dict(RESULT_COLUMNS, r) for r in rows]


def _table_exists(con: Any, name: str) -> bool:
    row = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ? AND table_schema = 'main'",
        [name],
    ).fetchone()
    return bool(row and row[0])


def _iso(value: Any) -> str | None:
    """A stored (naive UTC) timestamp as ISO 8601 with its zone."""
    return value.replace(tzinfo=dt.UTC).isoformat() if isinstance(value, dt.datetime) else None


def file_bytes(db_path: Path) -> int:
    """The store's size on disk: the DuckDB file and its write-ahead log, if any."""
    wal = db_path.with_name(db_path.name + ".wal")
    return sum(p.stat().st_size for p in (db_path, wal) if p.is_file())


def stats(db_path: str | Path) -> dict[str, Any]:
    """What the store knows about itself (read-only): chunks and documents in all and per source, the
    embedding dimensions, the models and time of the ingests it recorded, its indexes and its size.

    A file that does not exist yet is an empty store (``exists: false``), not an error: nothing has
    been ingested."""
    path = Path(db_path)
    out: dict[str, Any] = {
        "db_path": str(path), "exists": path.is_file(), "bytes": 0, "chunks": 0, "documents": 0,
        "sources": [], "dimensions": None, "embedding_models": [], "ingests": 0, "last_ingest": None,
        "indexes": {"full_text": False, "vector": False},
    }
    if not out["exists"]:
        return out
    out["bytes"] = file_bytes(path)
    with closing(connect(path, read_only=True, extensions=())) as con:
        kind = _embedding_type(con)
        if kind is None:
            return out
        out["dimensions"] = int(kind.removeprefix("FLOAT[").removesuffix("]"))
        row = con.execute(f"SELECT count(*), count(DISTINCT doc_id) FROM {TABLE}").fetchone()
        out["chunks"], out["documents"] = (int(row[0]), int(row[1])) if row else (0, 0)
        rows = con.execute(
            f"SELECT coalesce(source, ''), count(DISTINCT doc_id), count(*), count(DISTINCT author), "
            f"min(timestamp), max(timestamp) FROM {TABLE} GROUP BY 1 ORDER BY 3 DESC, 1"
        ).fetchall()
        out["sources"] = [
            {"source": r[0] or None, "documents": int(r[1]), "chunks": int(r[2]), "authors": int(r[3]),
             "earliest": _iso(r[4]), "latest": _iso(r[5])}
            for r in rows
        ]
        if _table_exists(con, INGESTS):
            row = con.execute(f"SELECT count(*), max(ingested_at) FROM {INGESTS}").fetchone()
            out["ingests"], out["last_ingest"] = (int(row[0]), _iso(row[1])) if row else (0, None)
            out["embedding_models"] = [
                str(r[0]) for r in con.execute(
                    f"SELECT embedding_model FROM {INGESTS} WHERE embedding_model IS NOT NULL "
                    "GROUP BY 1 ORDER BY max(ingested_at) DESC"
                ).fetchall()
            ]
        out["indexes"] = {
            "full_text": has_fts_index(con, TABLE),
            "vector": _index_exists(con, f"{TABLE}_embedding_hnsw"),
        }
    return out


def _index_exists(con: Any, name: str) -> bool:
    row = con.execute("SELECT count(*) FROM duckdb_indexes() WHERE index_name = ?", [name]).fetchone()
    return bool(row and row[0])
