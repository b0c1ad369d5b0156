"""Processor backends that make a RAG system out of Loom workers and pipelines.

- :class:`RagIngestBackend` reads files from its corpus folder (or text, Markdown or records in the
  payload), chunks, de-duplicates, embeds and stores them, then rebuilds the indexes. DuckDB has one
  writer per file: run the ingest worker with one replica.
- :class:`RagRetrieveBackend` embeds a question and returns the nearest chunks plus a ``context``
  text whose lines start with ``[n]``, ready for an answering LLM worker (a citation is that number:
  small models copy a digit more reliably than a hash).
- :class:`RagWindowBackend` returns the chunks of a time window of a stream, for a summarising worker.
- :class:`RagCitationsBackend` checks an answer's citations against the chunks it was given.
- :class:`RagStatsBackend` reports what the store knows about itself (chunks and documents per source,
  embedding dimensions and model, last ingest, indexes, size on disk).
- :class:`RagStoreBackend` is all of the above but citations in one worker, for a deployment where one
  process owns the DuckDB file (``action`` or the payload's keys choose).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from loom.backends import BackendError, ProcessingBackend
from loom.contrib.rag.chunking import Chunk, chunk_document, dedupe
from loom.contrib.rag.embedders import LazyEmbedding
from loom.contrib.rag.ingest import (
    SUFFIXES,
    Document,
    IngestError,
    parse_timestamp,
    read_jsonl,
    read_markdown,
    read_path,
    read_text,
    record_document,
)
from loom.contrib.rag.store import RagStore, nearest, stats, window

MAX_K = 50


def context_text(chunks: list[dict[str, Any]]) -> str:
    """``[n] (source) text`` lines, n from 1: what an answering model reads and cites."""
    return "\n".join(f"[{n}] ({c.get('source') or '?'}) {c['text']}" for n, c in enumerate(chunks, 1))


class RagIngestBackend(LazyEmbedding, ProcessingBackend):
    """Ingest ``paths`` (inside ``corpus_dir``), ``text``, ``markdown`` or ``records`` into the store."""

    def __init__(
        self,
        db_path: str,
        corpus_dir: str | None = None,
        embedding_provider: str = "offline",
        embedding_model: str | None = None,
        embedding_base_url: str | None = None,
        embedding_api_key_env: str | None = None,
        max_words: int = 120,
        overlap_words: int = 30,
        batch_size: int = 64,
    ):
        super().__init__(embedding_provider, embedding_model, embedding_base_url, embedding_api_key_env)
        self.db_path = db_path
        self.corpus_dir = Path(corpus_dir).resolve() if corpus_dir else None
        self.max_words = max_words
        self.overlap_words = overlap_words
        self.batch_size = batch_size
        self._lock = asyncio.Lock()

    def _corpus_files(self, names: list[Any]) -> list[Path]:
        if not names:
            return []
        if self.corpus_dir is None:
            raise BackendError("paths need corpus_dir in backend_config", code="invalid_input")
        files: list[Path] = []
        for name in names:
            if not isinstance(name, str) or not name:
                raise BackendError(f"path {name!r} must be a non-empty string", code="invalid_input")
            path = (self.corpus_dir / name).resolve()
            if not path.is_relative_to(self.corpus_dir):
                raise BackendError(f"path {name!r} is outside the corpus folder", code="invalid_input")
            if path.is_dir():
                files += sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file()
                                and p.resolve().is_relative_to(self.corpus_dir))
            elif path.is_file():
                files.append(path)
            else:
                raise BackendError(f"path {name!r} does not exist in the corpus folder", code="invalid_input")
        return files

    def documents(self, payload: dict[str, Any]) -> list[Document]:
        """Everything the payload names, read in full before anything is stored."""
        docs: list[Document] = []
        source = str(payload.get("source") or "payload")
        try:
            for path in self._corpus_files(list(payload.get("paths") or [])):
                assert self.corpus_dir is not None
                docs += read_path(path, str(path.relative_to(self.corpus_dir)))
            if isinstance(payload.get("text"), str):
                docs += read_text(payload["text"], source, payload.get("id"))
            if isinstance(payload.get("markdown"), str):
                docs += read_markdown(payload["markdown"], source)
            if isinstance(payload.get("jsonl"), str):
                docs += read_jsonl(payload["jsonl"].splitlines(), source)
            for i, record in enumerate(payload.get("records") or []):
                if not isinstance(record, dict):
                    raise IngestError(f"records[{i}]: expected an object")
                docs.append(record_document(record, source, f"records[{i}]"))
        except IngestError as exc:
            raise BackendError(str(exc), code="invalid_input") from exc
        if not docs:
            raise BackendError("nothing to ingest: give paths, text, markdown, jsonl or records",
                               code="invalid_input")
        return docs

    async def process(self, payload: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        docs = await asyncio.to_thread(self.documents, payload)
        chunks = [c for d in docs for c in chunk_document(d, self.max_words, self.overlap_words)]
        async with self._lock:
            return await self._store(docs, chunks)

    async def _store(self, docs: list[Document], chunks: list[Chunk]) -> dict[str, Any]:
        dims = self.embedder.dimensions or len(await self.embedder.embed("dimension probe"))
        with RagStore(self.db_path, dims) as store:
            fresh, duplicates = dedupe(chunks, await asyncio.to_thread(store.known_hashes))
            vectors: list[list[float]] = []
            for i in range(0, len(fresh), self.batch_size):
                vectors += await self.embedder.embed_batch([c.text for c in fresh[i:i + self.batch_size]])
            added = await asyncio.to_thread(store.add, fresh, vectors)
            await asyncio.to_thread(store.build_indexes)
            await asyncio.to_thread(store.record_ingest, self.model_name, len(docs), len(chunks), added,
                                    duplicates)
            total = store.count()
        output = {"documents": len(docs), "chunks": len(chunks), "added": added, "duplicates": duplicates,
                  "total": total}
        return {"output": output, "model_used": self.model_name}


class RagRetrieveBackend(LazyEmbedding, ProcessingBackend):
    """``{"question", "k"?}`` → the nearest chunks and a citable ``context``."""

    def __init__(
        self,
        db_path: str,
        k: int = 5,
        embedding_provider: str = "offline",
        embedding_model: str | None = None,
        embedding_base_url: str | None = None,
        embedding_api_key_env: str | None = None,
    ):
        super().__init__(embedding_provider, embedding_model, embedding_base_url, embedding_api_key_env)
        self.db_path = db_path
        self.k = k

    async def process(self, payload: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        question = payload.get("question")
        if not isinstance(question, str) or not question.strip():
            raise BackendError("question must be non-empty text", code="invalid_input")
        k = payload.get("k", self.k)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise BackendError(f"k must be an integer from 1 to {MAX_K}", code="invalid_input")
        vector = await self.embedder.embed(question)
        chunks = await asyncio.to_thread(nearest, self.db_path, vector, k)
        output = {"question": question, "chunks": chunks, "context": context_text(chunks)}
        return {"output": output, "model_used": getattr(self.embedder, "model", "embedding")}


class RagWindowBackend(ProcessingBackend):
    """``{"since", "until"}`` (ISO 8601) → the stream's chunks in that window, oldest first."""

    def __init__(self, db_path: str, limit: int = 200):
        self.db_path = db_path
        self.limit = limit

    async def process(self, payload: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        try:
            since = parse_timestamp(payload.get("since"), "since")
            until = parse_timestamp(payload.get("until"), "until")
        except IngestError as exc:
            raise BackendError(str(exc), code="invalid_input") from exc
        if since is None or until is None or since >= until:
            raise BackendError("give since < until (ISO 8601)", code="invalid_input")
        chunks = await asyncio.to_thread(window, self.db_path, since, until, self.limit)
        output = {"since": since.isoformat(), "until": until.isoformat(), "count": len(chunks),
                  "chunks": chunks, "context": context_text(chunks)}
        return {"output": output, "model_used": "duckdb"}


class RagCitationsBackend(ProcessingBackend):
    """``{"answer", "citations", "chunks"}`` → the answer with each citation resolved to its chunk.

    A citation is a context line number (``1``, ``"[2]"``) or a chunk id; one that names no chunk the
    answer was given fails the task (the answer would be unsupported)."""

    async def process(self, payload: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        given = [c for c in payload.get("chunks") or [] if isinstance(c, dict)]
        by_id = {c.get("chunk_id"): c for c in given}
        cited = payload.get("citations")
        if not isinstance(payload.get("answer"), str) or not isinstance(cited, list):
            raise BackendError("need answer (text) and citations (a list)", code="invalid_input")
        resolved, unknown = [], []
        for c in cited:
            ref = str(c).strip("[] ")
            if ref.isdigit() and 1 <= int(ref) <= len(given):
                resolved.append(given[int(ref) - 1])
            elif ref in by_id:
                resolved.append(by_id[ref])
            else:
                unknown.append(c)
        if unknown:
            raise BackendError(f"the answer cites chunks it was not given: {unknown}", code="bad_citation")
        fields = ("chunk_id", "doc_id", "source", "author", "text")
        sources = [{k: c.get(k) for k in fields} for c in resolved]
        return {"output": {"answer": payload["answer"], "citations": sources}, "model_used": "citations"}


class RagStatsBackend(ProcessingBackend):
    """``{}`` → the store's statistics (see :func:`loom.contrib.rag.store.stats`); reads only."""

    def __init__(self, db_path: str):
        self.db_path = db_path

    async def process(self, payload: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(payload) - {"action"})
        if unknown:
            raise BackendError(f"stats takes no input; got {', '.join(unknown)}", code="invalid_input")
        return {"output": await asyncio.to_thread(stats, self.db_path), "model_used": "duckdb"}


class RagStoreBackend(ProcessingBackend):
    """Ingest, retrieve, window and stats in one process that owns the DuckDB file.

    ``action`` is ``ingest``, ``retrieve``, ``window`` or ``stats``; without it a ``question`` means
    retrieve, ``since`` means window, anything else ingest. Run it with ``maxInFlight: 1`` and one replica:
    DuckDB lets one process write a file, and not read it read-only while writing.
    """

    def __init__(self, db_path: str, corpus_dir: str | None = None, k: int = 5, **embedding: Any):
        self.ingest = RagIngestBackend(db_path, corpus_dir, **embedding)
        self.retrieve = RagRetrieveBackend(db_path, k, **embedding)
        self.retrieve._embedder = self.ingest.embedder  # one model in memory, one HTTP client
        self.window = RagWindowBackend(db_path)
        self.stats = RagStatsBackend(db_path)

    async def process(self, payload: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        action = payload.get("action") or (
            "retrieve" if "question" in payload else "window" if "since" in payload else "ingest"
        )
        rest = {k: v for k, v in payload.items() if k != "action"}
        target: ProcessingBackend | None = {
            "ingest": self.ingest, "retrieve": self.retrieve, "window": self.window, "stats": self.stats
        }.get(str(action))
        if target is None:
            raise BackendError(f"unknown action {action!r}; one of ingest, retrieve, window, stats",
                               code="invalid_input")
        return await target.process(rest, config)

    async def close(self) -> None:
        await self.ingest.close()
