"""A small real DuckDB file for the contrib tests: a ``records`` table with a full-text index,
an 8-dimensional embedding column and a ``summaries`` view."""

from __future__ import annotations

import json
from pathlib import Path

from loom.contrib.duckdb import connect

RECORDS = [
    # id, title, summary, status, score, tags, created_at
    ("r1", "Rust memory safety", "Ownership and borrowing prevent data races", "open", 8.5, ["lang"],
     "2024-01-03"),
    ("r2", "Python packaging", "Wheels, sdists and the resolver explained", "closed", 6.0, ["lang", "ops"],
     "2024-01-05"),
    ("r3", "Kubernetes operators", "Reconcile loops keep the cluster converged", "open", 9.0, ["ops"],
     "2024-02-01"),
    ("r4", "Sourdough bread", "Wild yeast starter and a long cold proof", "open", 4.5, ["food"],
     "2024-02-10"),
    ("r5", "Espresso extraction", "Grind size, dose and the pressure profile", "closed", 7.0, ["food"],
     "2024-03-01"),
]
DIMS = 8


def fake_vector(text: str, dims: int = DIMS) -> list[float]:
    """The vector tests.fakes.llm_server.FakeLLMServer.vector gives ``text`` (kept in step with it)."""
    return [float((len(text) * (i + 1) + sum(map(ord, text))) % 97) for i in range(dims)]


def build_records_db(path: Path) -> Path:
    """Write the records table (embedding = fake_vector(title)), its FTS index and the view."""
    con = connect(path, read_only=False)
    try:
        con.execute(
            "CREATE TABLE records (id VARCHAR PRIMARY KEY, title VARCHAR, summary VARCHAR, status VARCHAR, "
            f"score DOUBLE, tags VARCHAR, created_at DATE, embedding FLOAT[{DIMS}], full_text VARCHAR)"
        )
        for rid, title, summary, status, score, tags, created in RECORDS:
            con.execute(
                "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [rid, title, summary, status, score, json.dumps(tags), created, fake_vector(title),
                 f"{title} {summary}"],
            )
        con.execute("PRAGMA create_fts_index('records', 'id', 'title', 'summary')")
        con.execute("CREATE VIEW summaries AS SELECT id, title, summary, status FROM records")
    finally:
        con.close()
    return path
