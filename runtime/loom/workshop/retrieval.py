"""Retrieval in the page (pure): which workers search a vector store, and the query they are sent.

A retrieval worker is a processor on one of the RAG contrib's searching backends; the search runs
through the worker's own engine, so the page shows exactly what a pipeline stage would get.
"""

from __future__ import annotations

from typing import Any

from loom.api.worker import WorkerSpec

#: Backends that answer ``{"question", "k"}`` with ranked ``chunks`` (each with its ``score``).
SEARCH_BACKENDS = {
    "loom.contrib.rag.backends.RagRetrieveBackend": {},
    "loom.contrib.rag.backends.RagStoreBackend": {"action": "retrieve"},
}


def searches(spec: WorkerSpec) -> bool:
    """Whether the worker searches a vector store."""
    return spec.worker_kind == "processor" and spec.processing_backend in SEARCH_BACKENDS


def query(spec: WorkerSpec, question: str, k: int) -> dict[str, Any]:
    """The task payload of one search."""
    return {**SEARCH_BACKENDS[str(spec.processing_backend)], "question": question, "k": k}
