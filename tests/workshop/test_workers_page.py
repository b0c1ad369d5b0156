"""Workers page and worker tests, used as a person would: click a worker, type into the form, run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.llm_server import FakeLLMServer, Reply
from tests.workshop.conftest import copy_samples
from tests.workshop.projects import classifier_project, classify

pytestmark = pytest.mark.integration


@pytest.fixture
async def openai() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer("openai", default=classify) as server:
        yield server


async def test_list_then_test_a_worker_with_a_rejected_reply_and_its_retry(
    tmp_path: Path, openai: FakeLLMServer, browser: Any, start_workshop: Any, artifacts: Path
) -> None:
    root = classifier_project(tmp_path / "project", openai)
    copy_samples(root, "worker-doc-extractor.yaml")
    (root / "worker-broken.yaml").write_text("name: broken\nsystem_prompt: hi\nsystem_promt: typo\n")
    ws = await start_workshop(root)
    page = await browser.new_page()

    await page.goto(f"{ws.url}/")
    await page.screenshot(path=artifacts / "workers.png", full_page=True)
    rows = page.locator("#workers tr")
    assert await rows.count() == 3  # header, classifier, doc-extractor
    classifier_row = await rows.nth(1).inner_text()
    assert "classifier" in classifier_row and "standard" in classifier_row and "valid" in classifier_row
    assert "text*: string" in classifier_row and "category*: enum" in classifier_row
    assert "processor" in await rows.nth(2).inner_text()
    broken = await page.locator("#broken").inner_text()
    assert "worker-broken.yaml" in broken and "unknown key 'system_promt'" in broken

    await page.click("text=classifier")
    openai.push(Reply(text="I would say it is an invoice.", model="m-1"))  # broken first reply
    await page.fill("textarea[name='f.text']", "An invoice for 3 chairs")
    await page.fill("input[name='f.pages']", "2")
    await page.click("#run-test")
    output = page.locator("#test-output")
    await output.wait_for(timeout=30_000)
    assert '"category": "invoice"' in await output.inner_text()
    assert await page.locator("#test-model").inner_text() == "m-1"
    assert await page.locator("#test-tokens").inner_text() == "22 in, 14 out"  # both replies counted
    assert await page.locator("#test-retries").inner_text() == "1"
    attempts = page.locator(".attempt")
    assert await attempts.count() == 2
    first = await attempts.nth(0).inner_text()
    assert "rejected" in first and "I would say it is an invoice." in first
    assert "Your reply was rejected" in first  # the feedback the engine sent back
    assert "valid" in await attempts.nth(1).inner_text()
    await page.screenshot(path=artifacts / "worker-test.png", full_page=True)
    sent = openai.requests[-1]
    assert '"pages": 2' in sent["messages"][1]["content"]  # the form typed the integer field

    # raw JSON that breaks the input contract: the input contract's error, no model call
    calls = len(openai.requests)
    await page.check("input[name='mode'][value='json']")
    await page.fill("#raw_json", '{"title": "no text"}')
    await page.click("#run-test")
    error = page.locator("#test-error")
    await error.wait_for(timeout=30_000)
    assert "text" in await error.inner_text() and "required" in await error.inner_text()
    assert len(openai.requests) == calls

    # a processor worker is testable too
    await page.goto(f"{ws.url}/workers/doc-extractor")
    await page.fill("textarea[name='f.text']", "Invoice 12 is due on 2024-01-02. Pay it.")
    await page.click("#run-test")
    await output.wait_for(timeout=30_000)
    text = await output.inner_text()
    assert '"dates": [\n    "2024-01-02"\n  ]' in text and '"sentence_count": 2' in text
    await page.screenshot(path=artifacts / "processor-test.png", full_page=True)
