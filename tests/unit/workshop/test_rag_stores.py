"""Finding the project's RAG stores in its manifests: workers grouped by DB file, the one that can
report statistics, the pipelines on each, and workers that own no store left out."""

from __future__ import annotations

from loom.api.loader import load_text
from loom.workshop.rag import stores
from loom.workshop.web import size

MANIFESTS = """\
name: store-a
worker_kind: processor
processing_backend: loom.contrib.rag.backends.RagStoreBackend
backend_config: {db_path: /data/a.duckdb, corpus_dir: corpus}
---
name: search-a
worker_kind: processor
processing_backend: loom.contrib.rag.backends.RagRetrieveBackend
backend_config: {db_path: /data/a.duckdb, embedding_provider: ollama, embedding_model: nomic-embed-text}
---
name: window-b
worker_kind: processor
processing_backend: loom.contrib.rag.backends.RagWindowBackend
backend_config: {db_path: /data/b.duckdb}
---
name: cite
worker_kind: processor
processing_backend: loom.contrib.rag.backends.RagCitationsBackend
---
name: answer
pipeline_stages:
  - {name: find, worker_type: search-a}
  - {name: check, worker_type: cite}
"""


def test_stores_by_file() -> None:
    a, b = stores(load_text(MANIFESTS))
    assert a.db_path == "/data/a.duckdb"
    assert [(u.name, u.role, u.can_report) for u in a.users] == [
        ("store-a", "ingest, retrieve, window, stats", True),
        ("search-a", "retrieve", False),
    ]
    assert (a.reporter, a.searcher, a.corpus_dirs) == ("store-a", "store-a", ["corpus"])
    assert a.embedding == ["offline", "ollama nomic-embed-text"]
    assert a.pipelines == ["answer (find)"]
    assert (b.db_path, b.reporter, b.searcher, b.embedding) == ("/data/b.duckdb", None, None, [])


def test_sizes_for_people() -> None:
    assert [size(n) for n in (0, 1023, 1024, 5 * 1024**2 + 1, 3 * 1024**3)] == [
        "0 bytes", "1023 bytes", "1.0 KiB", "5.0 MiB", "3.0 GiB"
    ]
