"""Where runs and golden baselines are kept: a SQLite file beside the suite.

SQLite (the standard library's ``sqlite3``) rather than DuckDB: it is always there (DuckDB is an
optional extra), a run is a handful of row-sized records written once and read back whole — not
analytics — and one file with transactions is safe to commit or cache in CI. Each run is stored
as its JSON document (the same ``to_dict`` the reports use), so readers need no schema of their
own.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

from loom.evals.runner import RunResult, now_iso


class StoreError(Exception):
    """A run or baseline that was asked for is not there, or the store cannot be used."""


def default_store_path(suite_path: str | Path) -> Path:
    """``<suite stem>.runs.sqlite`` beside the suite file."""
    p = Path(suite_path)
    return p.with_name(f"{p.stem}.runs.sqlite")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    suite TEXT NOT NULL,
    started_at TEXT NOT NULL,
    score REAL NOT NULL,
    passed INTEGER NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_suite ON runs (suite, started_at);
CREATE TABLE IF NOT EXISTS baselines (
    suite TEXT NOT NULL,
    name TEXT NOT NULL,
    run_id TEXT NOT NULL REFERENCES runs (run_id),
    saved_at TEXT NOT NULL,
    PRIMARY KEY (suite, name)
);
"""


class SqliteRunStore:
    """Runs and named baselines of suites in one SQLite file (created on first use)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=30)
            conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the run store: {exc}") from None
        return conn

    def save_run(self, run: RunResult) -> None:
        with closing(self._connect()) as conn, conn:
            conn.execute(
                "INSERT OR REPLACE INTO runs (run_id, suite, started_at, score, passed, doc) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    run.run_id,
                    run.suite,
                    run.started_at,
                    run.score,
                    int(run.passed),
                    json.dumps(run.to_dict()),
                ),
            )

    def run(self, run_id: str) -> RunResult:
        with closing(self._connect()) as conn:
            row = conn.execute("SELECT doc FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise StoreError(f"{self.path}: no run {run_id!r}")
        return RunResult.from_dict(json.loads(row[0]))

    def runs(self, suite: str, limit: int = 20) -> list[RunResult]:
        """The suite's latest runs, newest first."""
        with closing(self._connect()) as conn:
            rows = conn.execute(
                "SELECT doc FROM runs WHERE suite = ? ORDER BY started_at DESC, rowid DESC LIMIT ?",
                (suite, limit),
            ).fetchall()
        return [RunResult.from_dict(json.loads(r[0])) for r in rows]

    def save_baseline(self, suite: str, name: str, run_id: str) -> None:
        """Make a stored run the suite's baseline ``name`` (replacing an older one of that name)."""
        with closing(self._connect()) as conn, conn:
            if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                raise StoreError(f"{self.path}: no run {run_id!r} to save as baseline {name!r}")
            conn.execute(
                "INSERT OR REPLACE INTO baselines (suite, name, run_id, saved_at) VALUES (?, ?, ?, ?)",
                (suite, name, run_id, now_iso()),
            )

    def remove_baseline(self, suite: str, name: str) -> None:
        """Forget the suite's baseline ``name`` (its run stays stored)."""
        with closing(self._connect()) as conn, conn:
            gone = conn.execute("DELETE FROM baselines WHERE suite = ? AND name = ?", (suite, name)).rowcount
        if not gone:
            raise StoreError(f"{self.path}: suite {suite!r} has no baseline {name!r}")

    def baseline(self, suite: str, name: str) -> RunResult:
        with closing(self._connect()) as conn:
            row = conn.execute(
                "SELECT r.doc FROM baselines b JOIN runs r ON r.run_id = b.run_id "
                "WHERE b.suite = ? AND b.name = ?",
                (suite, name),
            ).fetchone()
        if row is None:
            known = ", ".join(sorted(self.baselines(suite)))
            hint = f" (baselines: {known})" if known else " (no baseline saved yet: --save-baseline)"
            raise StoreError(f"{self.path}: suite {suite!r} has no baseline {name!r}{hint}")
        return RunResult.from_dict(json.loads(row[0]))

    def baselines(self, suite: str) -> dict[str, str]:
        """Baseline name -> run id."""
        with closing(self._connect()) as conn:
            rows = conn.execute("SELECT name, run_id FROM baselines WHERE suite = ?", (suite,)).fetchall()
        return {name: run_id for name, run_id in rows}
