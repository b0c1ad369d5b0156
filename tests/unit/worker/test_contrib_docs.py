"""The demo's processor backends: fact extraction and report assembly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from loom.contrib.docs import (
    DocumentFacts,
    ReportAssembler,
    excerpt,
    extract_facts,
    guess_language,
    guess_title,
)
from loom.worker.processor import BackendError

EXAMPLE = Path(__file__).resolve().parents[3] / "config" / "samples" / "example.txt"


def test_facts_of_the_sample_document() -> None:
    facts = extract_facts(EXAMPLE.read_text(encoding="utf-8"))
    assert facts["title"] == "Incident report: payment outage at Northwind Traders"
    assert facts["language"] == "en"
    assert facts["dates"] == ["12 March 2025", "2025-03-13", "2025-03-12"]
    # Times of day, dates and the numbers inside addresses are not reported as numbers.
    assert facts["numbers"] == ["42", "1,870", "38,500", "30"]
    assert facts["emails"] == ["sre-team@northwind.example"]
    assert facts["urls"] == ["https://status.northwind.example/incidents/2025-03-12"]
    assert 100 < facts["word_count"] < 110
    assert facts["line_count"] == 11


def test_language_title_and_excerpt_helpers() -> None:
    assert (
        guess_language(["Der", "Bericht", "ist", "nicht", "fertig", "und", "die", "Daten", "mit", "dem"])
        == "de"
    )
    assert guess_language(["Le", "rapport", "est", "pour", "les", "clients", "et", "la", "direction"]) == "fr"
    assert guess_language(["xyzzy", "plugh"]) == "unknown"
    assert guess_title("\n\n## Quarterly numbers\nbody") == "Quarterly numbers"
    assert guess_title("A" * 200 + ". More.") == "A" * 119 + "…"
    cut = excerpt("word " * 100, 50)
    assert len(cut) <= 52 and cut.endswith(" …") and "  " not in cut


def test_document_facts_backend_rejects_empty_and_oversized_text() -> None:
    backend = DocumentFacts(max_excerpt_chars=60, max_chars=100)
    out = backend.process_sync({"text": "Hello world. This is fine."}, {})
    assert out["model_used"] == "loom.contrib.docs.facts"
    assert out["output"]["word_count"] == 5
    with pytest.raises(BackendError, match="non-empty string") as err:
        backend.process_sync({"text": "   "}, {})
    assert err.value.retryable is False
    with pytest.raises(BackendError, match="limit is 100"):
        backend.process_sync({"text": "x" * 101}, {})
    with pytest.raises(ValueError, match="at least 50"):
        DocumentFacts(max_excerpt_chars=10)


def test_report_assembler_joins_the_stages() -> None:
    facts = extract_facts(EXAMPLE.read_text(encoding="utf-8"))
    out = asyncio.run(
        ReportAssembler().process(
            {
                "facts": facts,
                "classification": {"category": "incident"},
                "summary": {
                    "summary": "Payments failed for 42 minutes.",
                    "entities": ["Stripe", "Stripe", " "],
                },
            },
            {},
        )
    )["output"]
    assert out["category"] == "incident"
    assert out["entities"] == ["Stripe"]
    assert out["key_facts"]["emails"] == ["sre-team@northwind.example"]
    assert out["markdown"].startswith("# Incident report: payment outage at Northwind Traders\n")
    assert "**Category:** incident" in out["markdown"] and "- Stripe" in out["markdown"]
    with pytest.raises(BackendError, match=r"payload\.facts"):
        ReportAssembler().process_sync({"classification": {}, "summary": {}}, {})
