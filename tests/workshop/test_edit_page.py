"""Editing a worker in the page: preview with diff and impact, a broken edit refused (nothing written),
a saved edit that keeps the file's comments, versions restored, a worker cloned."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.llm_server import FakeLLMServer
from tests.workshop.projects import WORKER, classifier_project, classify

pytestmark = pytest.mark.integration

NEW_PROMPT = "Sort the document into a category.\nAnswer with JSON only.\nBe terse.\n"


@pytest.fixture
async def openai() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer("openai", default=classify) as server:
        yield server


async def test_preview_refuse_save_restore_and_clone(
    tmp_path: Path, openai: FakeLLMServer, browser: Any, start_workshop: Any, artifacts: Path
) -> None:
    root = classifier_project(tmp_path / "project", openai)
    worker_file = root / "worker-classifier.yaml"
    ws = await start_workshop(root)
    page = await browser.new_page()
    await page.goto(f"{ws.url}/workers/classifier")
    assert "pipeline triage, stage classify" in await page.locator("#impact").inner_text()

    # preview: the diff of the file, and the mapping a renamed output field would break
    await page.fill("#system_prompt", NEW_PROMPT)
    output_box = await page.locator("#output_schema").input_value()
    await page.fill(
        "#output_schema", output_box.replace("[category]", "[label]").replace("category:", "label:")
    )
    await page.click("#preview")
    preview = page.locator("#preview-ok")
    await preview.wait_for()
    text = await preview.inner_text()
    assert "+    Be terse." in text
    assert "stage route: inputMapping.text reads 'classify.output.category': no field 'category'" in text
    await page.screenshot(path=artifacts / "edit-preview.png", full_page=True)

    # a broken schema is refused with the loader's message, and the file is untouched
    await page.fill("#output_schema", "type: objekt\n")
    await page.click("#save")
    refused = page.locator("#edit-result .problems")
    await refused.wait_for()
    assert "outputSchema" in await refused.inner_text() and "objekt" in await refused.inner_text()
    assert worker_file.read_text() == WORKER
    await page.screenshot(path=artifacts / "edit-refused.png", full_page=True)

    # a valid edit is written with the file's comments and block scalar kept
    await page.reload()
    await page.fill("#system_prompt", NEW_PROMPT)
    await page.click("#save")
    await page.locator("#saved").wait_for()
    saved = worker_file.read_text()
    assert saved == WORKER.replace(
        "    Answer with JSON only.\n", "    Answer with JSON only.\n    Be terse.\n"
    )

    # both versions are kept; restoring the original writes it back
    await page.reload()
    options = page.locator("#version option")
    assert await options.count() == 2
    labels = [await options.nth(i).inner_text() for i in range(2)]
    original = next(i for i, label in enumerate(labels) if "original" in label)
    await page.select_option("#version", await options.nth(original).get_attribute("value"))
    await page.screenshot(path=artifacts / "versions.png", full_page=True)
    await page.click("#restore")
    await page.locator("#restore-result #saved").wait_for()
    assert worker_file.read_text() == WORKER

    # clone: a new file, and the browser goes to the new worker
    await page.fill("#new_name", "classifier-two")
    await page.click("#clone-button")
    await page.wait_for_url(f"{ws.url}/workers/classifier-two")
    clone = (root / "worker-classifier-two.yaml").read_text()
    assert "name: classifier-two" in clone and "# The prompt is a block scalar" in clone
    assert "Be terse." not in clone
