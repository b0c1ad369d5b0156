"""Which workers the Retrieval page searches, and the query each is sent."""

from __future__ import annotations

from pathlib import Path

from loom.workshop.project import Project
from loom.workshop.retrieval import query, searches

ROOT = Path(__file__).resolve().parents[3]


def test_the_rag_store_searches_and_gets_a_retrieve_action() -> None:
    workers = {w.name: w.spec for w in Project(ROOT / "config" / "samples-rag").load().workers()}
    assert sorted(n for n, spec in workers.items() if searches(spec)) == ["rag-store"]
    assert query(workers["rag-store"], "Who bakes?", 3) == {
        "action": "retrieve",
        "question": "Who bakes?",
        "k": 3,
    }
    samples = Project(ROOT / "config" / "samples").load().workers()
    assert not any(searches(w.spec) for w in samples)  # the extractor is a processor, but no search
