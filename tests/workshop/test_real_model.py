"""One worker test on the real local model (SmolLM2-135M under llama.cpp, started by the Workshop on
first use): the page shows the model's schema-valid answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.workshop.conftest import copy_samples

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CATEGORIES = {"invoice", "contract", "report", "incident", "news", "email", "other"}


async def test_sample_classifier_on_the_embedded_model(
    tmp_path: Path, browser: Any, start_workshop: Any, artifacts: Path
) -> None:
    root = tmp_path / "project"
    copy_samples(root, "worker-doc-classifier.yaml", "router-policy.yaml")
    ws = await start_workshop(root)
    page = await browser.new_page()
    await page.goto(f"{ws.url}/workers/doc-classifier")
    await page.fill("textarea[name='f.title']", "Invoice")
    await page.fill("textarea[name='f.text']", "INVOICE #2291. Amount due: 1,250.00 EUR. Pay within 30 days.")
    await page.click("#run-test")
    await page.locator("text=starting the embedded model").wait_for(timeout=30_000)  # progress, not a wait
    output = page.locator("#test-output")
    await output.wait_for(timeout=240_000)
    answer = json.loads(await output.inner_text())
    assert set(answer) == {"category"} and answer["category"] in CATEGORIES
    assert "smollm2" in (await page.locator("#test-model").inner_text()).lower()
    tokens = await page.locator("#test-tokens").inner_text()
    assert int(tokens.split(" in")[0]) > 0
    await page.screenshot(path=artifacts / "real-model-test.png", full_page=True)
