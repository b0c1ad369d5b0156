"""Retrieval-augmented generation over DuckDB: ingest, chunk, embed, store, retrieve, analyse.

- :mod:`~loom.contrib.rag.embedders`: the embedding providers (offline default, Ollama, OpenAI-compatible);
- :mod:`~loom.contrib.rag.ingest`: text, Markdown and JSONL (social-media stream) records;
- :mod:`~loom.contrib.rag.chunking`: windows with overlap, stable ids, de-duplication;
- :mod:`~loom.contrib.rag.store`: the DuckDB chunk table with its full-text and vector indexes;
- :mod:`~loom.contrib.rag.backends`: processor backends for workers and pipelines.
"""
