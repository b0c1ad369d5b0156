"""RAG ingestion and chunking: pure functions on text."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from loom.contrib.rag.chunking import chunk_document, dedupe, sentences, windows
from loom.contrib.rag.ingest import Document, IngestError, read_jsonl, read_markdown


def test_windows_pack_sentences_with_overlap() -> None:
    text = " ".join(f"Sentence number {i} has five." for i in range(10))  # 5 words each
    out = windows(text, max_words=20, overlap_words=5)
    assert all(len(w.split()) <= 20 for w in out)
    assert out[0].startswith("Sentence number 0") and out[0].endswith("number 3 has five.")
    assert out[1].startswith("Sentence number 3")  # the last sentence carried over
    assert "Sentence number 9 has five." in out[-1]
    joined = " ".join(out)
    assert all(f"number {i} has" in joined for i in range(10))


def test_long_sentence_is_split_into_word_windows() -> None:
    text = " ".join(f"w{i}" for i in range(50))
    out = windows(text, max_words=20, overlap_words=5)
    assert [len(w.split()) for w in out][:2] == [20, 20]
    assert out[1].split()[0] == "w15" and out[-1].split()[-1] == "w49"


def test_bad_window_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="overlap_words"):
        windows("a. b.", max_words=5, overlap_words=5)


def test_sentences_split_on_end_marks_and_paragraphs() -> None:
    assert sentences("One here. Two there!\n\nthree without capital") == [
        "One here.", "Two there!", "three without capital"
    ]


def test_chunk_ids_are_stable_and_reposts_deduplicated() -> None:
    a = Document(id="post-1", text="The ferry leaves at noon. Tickets cost three euros.", source="feed")
    again = Document(id="post-1", text="The  ferry leaves at noon.  Tickets cost three euros.", source="feed")
    repost = Document(id="post-9", text="the ferry leaves at noon. tickets cost three euros.", source="feed")
    first, second, third = (chunk_document(d)[0] for d in (a, again, repost))
    assert first.chunk_id == second.chunk_id  # whitespace does not change identity
    assert third.chunk_id != first.chunk_id and third.content_hash == first.content_hash
    kept, dropped = dedupe([first, third])
    assert kept == [first] and dropped == 1
    assert dedupe([third], {first.content_hash}) == ([], 1)


def test_markdown_sections_carry_their_heading_path() -> None:
    md = "# Guide\nIntro text.\n## Ferry\nLeaves hourly.\n```\n# not a heading\n```\n## Tram\nLine 4.\n"
    docs = read_markdown(md, "guide.md")
    assert [(d.title, d.text.splitlines()[0]) for d in docs] == [
        ("Guide", "Intro text."), ("Guide / Ferry", "Leaves hourly."), ("Guide / Tram", "Line 4.")
    ]
    assert "# not a heading" in docs[1].text
    assert chunk_document(docs[1])[0].text.startswith("Guide / Ferry: ")


def test_jsonl_records_and_bad_lines() -> None:
    first = {"id": 7, "text": "hi there", "author": "@a", "timestamp": "2025-03-01T08:00:00Z", "lang": "en"}
    lines = [json.dumps(first), "", '{"text": "epoch", "timestamp": 0}']
    docs = read_jsonl(lines, "feed.jsonl")
    assert docs[0].id == "7" and docs[0].author == "@a" and docs[0].metadata == {"lang": "en"}
    assert docs[0].timestamp == dt.datetime(2025, 3, 1, 8, tzinfo=dt.UTC)
    assert docs[1].id == "feed.jsonl:3" and docs[1].timestamp == dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    for bad, why in [("{not json", "feed.jsonl:1: not JSON"), ('["list"]', "expected an object"),
                     ('{"text": ""}', "has no 'text'"), ('{"text": "x", "timestamp": "soon"}', "timestamp")]:
        with pytest.raises(IngestError, match=why):
            read_jsonl([bad], "feed.jsonl")
