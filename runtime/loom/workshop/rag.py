"""The RAG stores of a project (pure): which workers use which DuckDB file, and how to ask one for
its statistics.

A store is a ``db_path`` named in the ``backendConfig`` of a processor on one of the RAG contrib's
backends. Its statistics come from a worker on :class:`~loom.contrib.rag.backends.RagStoreBackend`
(action ``stats``), run through the worker's own engine, as a search is: the Workshop itself opens no
store file, which may lie outside the project folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loom.api.loader import Resource
from loom.api.worker import WorkerSpec

_PREFIX = "loom.contrib.rag.backends."
#: What each RAG backend does with its store.
ROLES = {
    "RagStoreBackend": "ingest, retrieve, window, stats",
    "RagIngestBackend": "ingest",
    "RagRetrieveBackend": "retrieve",
    "RagWindowBackend": "window",
}
#: The backend that answers ``{"action": "stats"}``.
STATS_BACKEND = f"{_PREFIX}RagStoreBackend"
STATS_QUERY: dict[str, Any] = {"action": "stats"}


@dataclass
class StoreUser:
    """A worker on a store, and what it does with it."""

    name: str
    role: str
    can_report: bool


@dataclass
class Store:
    """One DuckDB file and what the manifests say about it."""

    db_path: str
    users: list[StoreUser] = field(default_factory=list)
    corpus_dirs: list[str] = field(default_factory=list)
    embedding: list[str] = field(default_factory=list)
    pipelines: list[str] = field(default_factory=list)

    @property
    def reporter(self) -> str | None:
        """The worker that can report the store's statistics (the first on ``RagStoreBackend``)."""
        return next((u.name for u in self.users if u.can_report), None)

    @property
    def searcher(self) -> str | None:
        """A worker the retrieval page can search this store with."""
        return next((u.name for u in self.users if "retrieve" in u.role), None)


def backend_class(spec: WorkerSpec) -> str | None:
    """The RAG backend class name a worker runs, if it runs one that owns a store."""
    backend = spec.processing_backend or ""
    if spec.worker_kind != "processor" or not backend.startswith(_PREFIX):
        return None
    name = backend.removeprefix(_PREFIX)
    return name if name in ROLES else None


def embedding_of(config: dict[str, Any]) -> str:
    """The embedding a worker is configured with, as people read it (``offline``, ``ollama nomic…``)."""
    provider = str(config.get("embedding_provider") or "offline")
    model = config.get("embedding_model")
    return f"{provider} {model}" if model else provider


def stores(resources: list[Resource]) -> list[Store]:
    """Every store the manifests name, with the workers and pipelines that use it, by path."""
    found: dict[str, Store] = {}
    names: dict[str, Store] = {}
    for res in (r for r in resources if r.kind == "Worker"):
        spec: WorkerSpec = res.spec
        cls = backend_class(spec)
        db = spec.backend_config.get("db_path") if cls else None
        if not cls or not isinstance(db, str) or not db:
            continue
        store = found.setdefault(db, Store(db))
        store.users.append(StoreUser(spec.worker_type, ROLES[cls], f"{_PREFIX}{cls}" == STATS_BACKEND))
        corpus = spec.backend_config.get("corpus_dir")
        if isinstance(corpus, str) and corpus not in store.corpus_dirs:
            store.corpus_dirs.append(corpus)
        if cls != "RagWindowBackend" and embedding_of(spec.backend_config) not in store.embedding:
            store.embedding.append(embedding_of(spec.backend_config))
        names[spec.worker_type] = store
    for res in (r for r in resources if r.kind == "Pipeline"):
        for stage in res.spec.pipeline_stages:
            used = names.get(stage.worker_type)
            label = f"{res.spec.pipeline_name} ({stage.name})"
            if used is not None and label not in used.pipelines:
                used.pipelines.append(label)
    for each in found.values():
        each.users.sort(key=lambda u: (not u.can_report, u.name))
    return sorted(found.values(), key=lambda s: s.db_path)
