"""RAG on a real DuckDB file with the offline embedding model: ingest the bundled corpus, retrieve,
measure recall@5 on its 50 question→passage pairs, windows, citations, and the HTTP embedders."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from tests.fakes.llm_server import FakeLLMServer
from tests.support.endpoints import loopback_allowed

from loom.contrib.duckdb import DuckDBQueryBackend, connect
from loom.contrib.rag.backends import (
    RagCitationsBackend,
    RagIngestBackend,
    RagRetrieveBackend,
    RagStoreBackend,
    RagWindowBackend,
)
from loom.contrib.rag.embedders import OFFLINE_MODEL
from loom.worker.processor import BackendError

SAMPLE = Path(__file__).resolve().parents[2] / "config" / "samples-rag"
CORPUS = SAMPLE / "corpus"
#: recall@5 by chance is 5/50 = 0.1; the offline model measured 1.0 on this set.
RECALL_FLOOR = 0.8


async def _ingest(db: Path, **payload: Any) -> dict[str, Any]:
    backend = RagIngestBackend(db_path=str(db), corpus_dir=str(CORPUS))
    try:
        return (await backend.process(payload, {}))["output"]
    finally:
        await backend.close()


def recall_at(k: int, ranked: list[list[str]], answers: list[str]) -> float:
    return sum(a in r[:k] for r, a in zip(ranked, answers, strict=True)) / len(answers)


async def test_offline_recall_at_5_on_the_bundled_corpus(tmp_path: Path) -> None:
    db = tmp_path / "rag.duckdb"
    out = await _ingest(db, paths=["."])
    assert out == {"documents": 50, "chunks": 50, "added": 50, "duplicates": 0, "total": 50}
    questions = [json.loads(line) for line in (SAMPLE / "questions.jsonl").read_text().splitlines()]
    assert len(questions) == 50
    retrieve = RagRetrieveBackend(db_path=str(db), k=5)
    ranked = []
    for q in questions:
        result = (await retrieve.process({"question": q["question"]}, {}))["output"]
        ranked.append([c["doc_id"] for c in result["chunks"]])
    answers = [q["answer_id"] for q in questions]
    recall = recall_at(5, ranked, answers)
    print(f"offline recall@5 = {recall:.2f}, recall@1 = {recall_at(1, ranked, answers):.2f}")
    assert recall >= RECALL_FLOOR


async def test_reingest_adds_nothing_and_reposts_are_dropped(tmp_path: Path) -> None:
    db = tmp_path / "rag.duckdb"
    await _ingest(db, paths=["town_posts.jsonl"])
    again = await _ingest(db, paths=["town_posts.jsonl"])
    assert (again["added"], again["duplicates"], again["total"]) == (0, 50, 50)
    repost = "THE harbour ferry leaves every forty minutes between six in the morning and midnight. " \
             "A single ticket costs three euros and bicycles travel free."
    out = await _ingest(db, records=[{"id": "rt-1", "text": repost, "author": "@someone"},
                                     {"id": "new-1", "text": "The ferry gets a second boat in May."}])
    assert (out["added"], out["duplicates"], out["total"]) == (1, 1, 51)


async def test_indexes_serve_the_query_backend(tmp_path: Path) -> None:
    db = tmp_path / "rag.duckdb"
    await _ingest(db, paths=["town_posts.jsonl"])
    backend = DuckDBQueryBackend(str(db), table_name="chunks", id_column="chunk_id",
                                 result_columns=["doc_id", "text"], filter_fields={"author": "author = ?"},
                                 stats_groups=["author"])
    found = backend.query({"action": "search", "query": "mammoth skeleton"})
    assert found["results"][0]["doc_id"] == "post-museum"
    by_author = backend.query({"action": "stats", "group_by": "author"})
    assert sum(g["count"] for g in by_author["groups"]) == 50 and len(by_author["groups"]) == 5
    query = {"action": "vector_search", "query": "steam locomotive to the village"}
    similar = await backend.process(query, {})
    assert similar["output"]["results"][0]["doc_id"] == "post-railway"
    con = connect(db, read_only=True)
    indexes = {r[0] for r in con.execute("SELECT index_name FROM duckdb_indexes()").fetchall()}
    con.close()
    assert "chunks_embedding_hnsw" in indexes


async def test_window_and_citations(tmp_path: Path) -> None:
    db = tmp_path / "rag.duckdb"
    await _ingest(db, paths=["town_posts.jsonl"])
    win = (await RagWindowBackend(str(db)).process(
        {"since": "2025-03-01T00:00:00Z", "until": "2025-03-02T00:00:00Z"}, {}))["output"]
    assert {c["doc_id"] for c in win["chunks"]} == {"post-lighthouse", "post-garden"}
    assert win["context"].count("\n") == 1 and win["context"].startswith("[")
    chunks = win["chunks"]
    ok = await RagCitationsBackend().process(
        {"answer": "Solar.", "citations": [f"[{chunks[0]['chunk_id']}]"], "chunks": chunks}, {})
    assert ok["output"]["citations"][0]["doc_id"] == chunks[0]["doc_id"]
    cite = RagCitationsBackend()
    by_number = await cite.process({"answer": "x", "citations": [2, "[1]"], "chunks": chunks}, {})
    cited = [c["doc_id"] for c in by_number["output"]["citations"]]
    assert cited == [chunks[1]["doc_id"], chunks[0]["doc_id"]]
    with pytest.raises(BackendError, match="cites chunks it was not given"):
        await cite.process({"answer": "x", "citations": ["made-up", 3], "chunks": chunks}, {})


async def test_stats_report_what_the_store_holds(tmp_path: Path) -> None:
    db = tmp_path / "rag.duckdb"
    store = RagStoreBackend(db_path=str(db), corpus_dir=str(CORPUS))

    async def stats() -> dict[str, Any]:
        result = await store.process({"action": "stats"}, {})
        assert result["model_used"] == "duckdb"
        return dict(result["output"])

    try:
        empty = await stats()
        assert (empty["exists"], empty["chunks"], empty["sources"]) == (False, 0, [])
        assert empty["last_ingest"] is None
        assert not db.exists()  # asking for statistics creates no store
        before = dt.datetime.now(dt.UTC)
        await store.process({"action": "ingest", "paths": ["town_posts.jsonl"]}, {})
        note = "# Ferry\n\nThe ferry gets a second boat in May.\n\n# Museum\n\nThe museum opens on Sundays."
        await store.process({"action": "ingest", "markdown": note, "source": "council-notes"}, {})
        after = dt.datetime.now(dt.UTC)
        got = await stats()
    finally:
        await store.close()
    wal = db.with_name("rag.duckdb.wal")
    assert got["exists"] and got["bytes"] == db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    assert (got["chunks"], got["documents"], got["dimensions"], got["ingests"]) == (52, 52, 256, 2)
    assert got["embedding_models"] == [OFFLINE_MODEL]
    assert before <= dt.datetime.fromisoformat(got["last_ingest"]) <= after
    assert got["indexes"] == {"full_text": True, "vector": True}
    feed, notes = got["sources"]  # most chunks first
    assert feed == {"source": "town-feed", "documents": 50, "chunks": 50, "authors": 5,
                    "earliest": "2025-03-01T08:00:00+00:00", "latest": "2025-03-28T15:00:00+00:00"}
    assert notes == {"source": "council-notes", "documents": 2, "chunks": 2, "authors": 0,
                     "earliest": None, "latest": None}


async def test_stats_of_a_store_without_ingest_records_and_bad_input(tmp_path: Path) -> None:
    db = tmp_path / "rag.duckdb"
    await _ingest(db, text="One short note.", source="note")
    con = connect(db, read_only=False, extensions=())
    con.execute("DROP TABLE ingests")  # a store written before ingests were recorded
    con.close()
    store = RagStoreBackend(db_path=str(db))
    try:
        got = (await store.process({"action": "stats"}, {}))["output"]
        with pytest.raises(BackendError, match="stats takes no input; got question"):
            await store.process({"action": "stats", "question": "why?"}, {})
        with pytest.raises(BackendError, match="one of ingest, retrieve, window, stats"):
            await store.process({"action": "count"}, {})
    finally:
        await store.close()
    assert (got["chunks"], got["ingests"], got["last_ingest"], got["embedding_models"]) == (1, 0, None, [])
    assert got["sources"][0]["source"] == "note"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"paths": ["../../../etc"]}, "outside the corpus folder"),
        ({"paths": ["missing.md"]}, "does not exist"),
        ({"jsonl": '{"text": "fine"}\n{broken'}, "payload:2: not JSON"),
        ({}, "nothing to ingest"),
    ],
)
async def test_bad_ingest_input_stores_nothing(tmp_path: Path, payload: dict[str, Any], message: str) -> None:
    db = tmp_path / "rag.duckdb"
    with pytest.raises(BackendError, match=message):
        await _ingest(db, **payload)
    assert not db.exists()


@pytest.mark.parametrize("kind", ["openai", "ollama"])
async def test_http_embedders(tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "rag.duckdb"
    async with FakeLLMServer(kind, dimensions=16) as fake:  # type: ignore[arg-type]
        for name, value in loopback_allowed(fake.url).items():  # the embedding endpoint is on the allow-list
            monkeypatch.setenv(name, value)
        cfg = {"embedding_provider": kind, "embedding_model": "embed-1", "embedding_base_url": fake.url}
        ingest = RagIngestBackend(db_path=str(db), **cfg)
        out = (await ingest.process({"text": "One short note.", "source": "note"}, {}))["output"]
        await ingest.close()
        retrieve = RagRetrieveBackend(db_path=str(db), **cfg)
        got = (await retrieve.process({"question": "One short note.", "k": 1}, {}))["output"]
        await retrieve.close()
    assert out["added"] == 1 and got["chunks"][0]["text"] == "One short note."
    assert got["chunks"][0]["score"] == pytest.approx(1.0)
    assert all(r.get("model") == "embed-1" for r in fake.requests)
