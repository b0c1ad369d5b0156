"""The RAG page: the project's stores with the workers and pipelines on each, and the statistics its
RagStoreBackend worker reports (a real DuckDB file filled with the offline embedding model)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from loom.contrib.rag.backends import RagStoreBackend
from tests.workshop.conftest import ROOT

pytestmark = pytest.mark.integration

RAG = ROOT / "config" / "samples-rag"
OTHER = """\
apiVersion: loom.dev/v1alpha1
kind: Worker
metadata:
  name: archive-search
spec:
  workerKind: processor
  processingBackend: loom.contrib.rag.backends.RagRetrieveBackend
  backendConfig: {db_path: DB, k: 3}
"""


async def test_stores_with_their_statistics(
    tmp_path: Path, browser: Any, start_workshop: Any, artifacts: Path
) -> None:
    root = tmp_path / "project"
    root.mkdir()
    db = tmp_path / "town.duckdb"
    sample = (RAG / "worker-rag-store.yaml").read_text()
    (root / "worker-rag-store.yaml").write_text(sample.replace("/tmp/loom-samples-rag/town.duckdb", str(db)))
    (root / "pipeline-rag-ingest.yaml").write_text((RAG / "pipeline-rag-ingest.yaml").read_text())
    (root / "worker-archive.yaml").write_text(OTHER.replace("DB", str(tmp_path / "archive.duckdb")))
    store = RagStoreBackend(db_path=str(db))
    try:
        posts = (RAG / "corpus" / "town_posts.jsonl").read_text()
        await store.process({"action": "ingest", "jsonl": posts, "source": "town-feed"}, {})
        notes = "# Ferry\n\nA second boat comes in May.\n\n# Museum\n\nOpen on Sundays."
        await store.process({"action": "ingest", "markdown": notes, "source": "council-notes"}, {})
    finally:
        await store.close()
    ws = await start_workshop(root)
    page = await browser.new_page()

    await page.goto(f"{ws.url}/workers")
    await page.click("header >> text=RAG")
    town = page.locator(f"section.store[data-db='{db}']")
    figures = town.locator(".stats-figures")
    await figures.wait_for(timeout=60_000)
    assert await figures.locator(".chunks").inner_text() == "52"
    assert await figures.locator(".documents").inner_text() == "52"
    assert await figures.locator(".embedding").inner_text() == "wordllama-l2-supercat-256, 256 dimensions"
    assert await figures.locator(".indexes").inner_text() == "full text yes, vector (HNSW) yes"
    assert re.fullmatch(r"\d+\.\d (KiB|MiB)", await figures.locator(".size").inner_text())
    assert re.match(r"20\d\d-\d\d-\d\dT.* \(2 ingests\)$", await figures.locator(".last-ingest").inner_text())
    rows = [await r.inner_text() for r in await town.locator("tr.source").all()]
    first, last = "2025-03-01T08:00:00+00:00", "2025-03-28T15:00:00+00:00"
    assert rows[0].split("\t") == ["town-feed", "50", "50", "5", first, last]
    assert rows[1].split("\t") == ["council-notes", "2", "2", "0", "—", "—"]
    config = await town.locator(".store-config").inner_text()
    assert "rag-store (ingest, retrieve, window, stats)" in config and "rag-ingest (ingest)" in config

    other = page.locator(f"section.store[data-db='{tmp_path / 'archive.duckdb'}']")
    assert "archive-search (retrieve)" in await other.inner_text()
    assert "No worker on RagStoreBackend uses this file" in await other.inner_text()
    await page.screenshot(path=artifacts / "rag.png", full_page=True)

    await town.locator("a.search-link").click()
    await page.wait_for_url("**/retrieval?worker=rag-store")
    assert await page.locator("#rag-worker").input_value() == "rag-store"


async def test_an_empty_store_says_so(
    tmp_path: Path, browser: Any, start_workshop: Any, artifacts: Path
) -> None:
    root = tmp_path / "project"
    root.mkdir()
    db = tmp_path / "never-filled.duckdb"
    sample = (RAG / "worker-rag-store.yaml").read_text()
    (root / "worker-rag-store.yaml").write_text(sample.replace("/tmp/loom-samples-rag/town.duckdb", str(db)))
    ws = await start_workshop(root)
    page = await browser.new_page()
    await page.goto(f"{ws.url}/rag")
    empty = page.locator(".stats-empty")
    await empty.wait_for(timeout=60_000)
    assert await empty.inner_text() == "The store file does not exist yet: nothing has been ingested."
    assert not db.exists()
    await page.screenshot(path=artifacts / "rag-empty.png", full_page=True)
