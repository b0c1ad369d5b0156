"""Sentence windows with overlap, stable chunk ids and de-duplication (pure functions).

A chunk packs whole sentences up to ``max_words``; the next chunk starts with the last
sentences of the previous one, up to ``overlap_words``. A sentence longer than ``max_words``
is split into word windows. The chunk id hashes the document id and the normalised text,
so re-ingesting the same document gives the same ids; the content hash (text alone) finds
the same text posted twice (a repost, a quoted tweet) and keeps the first.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from loom.contrib.rag.ingest import Document

_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+(?=[\"'(\[]?[A-Z0-9À-Ý])")


@dataclass(frozen=True)
class Chunk:
    """A window of one document."""

    chunk_id: str
    content_hash: str
    doc: Document
    position: int
    text: str


def normalise(text: str) -> str:
    """Lower case, single spaces: what counts as the same text."""
    return " ".join(text.lower().split())


def content_hash(text: str) -> str:
    return hashlib.sha256(normalise(text).encode()).hexdigest()[:24]


def chunk_id(doc_id: str, text: str) -> str:
    return hashlib.sha256(f"{doc_id}\x00{normalise(text)}".encode()).hexdigest()[:24]


def sentences(text: str) -> list[str]:
    """Sentences of ``text`` (paragraph breaks always end one)."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        out += [s.strip() for s in _SENTENCE_END.split(" ".join(para.split())) if s.strip()]
    return out


def windows(text: str, max_words: int = 120, overlap_words: int = 30) -> list[str]:
    """Overlapping sentence windows of at most ``max_words`` words (see the module docstring)."""
    if max_words < 1 or not 0 <= overlap_words < max_words:
        raise ValueError("need max_words >= 1 and 0 <= overlap_words < max_words")
    units: list[str] = []
    for s in sentences(text):
        words = s.split()
        if len(words) <= max_words:
            units.append(s)
        else:
            step = max_words - overlap_words
            units += [" ".join(words[i:i + max_words]) for i in range(0, len(words) - overlap_words, step)]
    out: list[str] = []
    current: list[str] = []
    count = 0
    for unit in units:
        n = len(unit.split())
        if current and count + n > max_words:
            out.append(" ".join(current))
            carried: list[str] = []
            kept = 0
            for prev in reversed(current):
                m = len(prev.split())
                if kept + m > overlap_words or kept + m + n > max_words:
                    break
                carried.insert(0, prev)
                kept += m
            current, count = carried, kept
        current.append(unit)
        count += n
    if current:
        out.append(" ".join(current))
    return out


def chunk_document(doc: Document, max_words: int = 120, overlap_words: int = 30) -> list[Chunk]:
    """The document's windows as chunks (a title is prefixed so a section keeps its context)."""
    prefix = f"{doc.title}: " if doc.title else ""
    return [
        Chunk(chunk_id(doc.id, w), content_hash(w), doc, i, prefix + w)
        for i, w in enumerate(windows(doc.text, max_words, overlap_words))
    ]


def dedupe(chunks: Iterable[Chunk], seen: set[str] | None = None) -> tuple[list[Chunk], int]:
    """Chunks whose text was not seen before (in ``seen`` or earlier in the list), and the number dropped."""
    seen = set() if seen is None else seen
    kept, dropped = [], 0
    for chunk in chunks:
        if chunk.content_hash in seen:
            dropped += 1
            continue
        seen.add(chunk.content_hash)
        kept.append(chunk)
    return kept, dropped
