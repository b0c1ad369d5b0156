"""Retrieval in the page: a RAG store worker (DuckDB, the offline embedding model) filled through the
worker's Test form, then searched, the ranked chunks shown with their scores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.workshop.conftest import ROOT

pytestmark = pytest.mark.integration

RAG = ROOT / "config" / "samples-rag"


async def test_fill_a_store_then_search_it(
    tmp_path: Path, browser: Any, start_workshop: Any, artifacts: Path
) -> None:
    root = tmp_path / "project"
    root.mkdir()
    worker = (RAG / "worker-rag-store.yaml").read_text()
    (root / "worker-rag-store.yaml").write_text(
        worker.replace("/tmp/loom-samples-rag/town.duckdb", str(tmp_path / "town.duckdb"))
    )
    posts = (RAG / "corpus" / "town_posts.jsonl").read_text()
    ws = await start_workshop(root)
    page = await browser.new_page()

    await page.goto(f"{ws.url}/workers/rag-store")
    await page.check("input[name='mode'][value='json']")
    await page.fill("#raw_json", json.dumps({"action": "ingest", "jsonl": posts, "source": "town-feed"}))
    await page.click("#run-test")
    output = page.locator("#test-output")
    await output.wait_for(timeout=120_000)
    ingested = json.loads(await output.inner_text())
    assert ingested["added"] == ingested["total"] > 0

    await page.click("text=Retrieval")
    await page.fill("#question", "When does the bakery bake its rye sourdough?")
    await page.fill("#k", "3")
    await page.click("#search")
    chunks = page.locator("#chunks tr.chunk")
    await chunks.first.wait_for(timeout=120_000)
    assert await chunks.count() == 3
    assert await chunks.nth(0).get_attribute("data-doc") == "post-bakery"
    assert "sourdough" in await chunks.nth(0).inner_text()
    scores = [float(await chunks.nth(i).locator(".score").inner_text()) for i in range(3)]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[2]
    await page.screenshot(path=artifacts / "retrieval.png", full_page=True)
