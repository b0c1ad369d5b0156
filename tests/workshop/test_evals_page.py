"""Evals in the page: run a suite, save the run as the golden baseline, change the prompt in the
editor, run again against the baseline and see the regressed case marked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.llm_server import FakeLLMServer
from tests.workshop.projects import classifier_project, classify

pytestmark = pytest.mark.integration


@pytest.fixture
async def openai() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer("openai", default=classify) as server:
        yield server


async def test_run_save_baseline_change_prompt_and_see_the_regression(
    tmp_path: Path, openai: FakeLLMServer, browser: Any, start_workshop: Any, artifacts: Path
) -> None:
    root = classifier_project(tmp_path / "project", openai)
    ws = await start_workshop(root)
    page = await browser.new_page()

    await page.goto(f"{ws.url}/evals")
    suites = await page.locator("#suites").inner_text()
    assert "classifier-evals" in suites and "evals/classifier.yaml" in suites
    await page.screenshot(path=artifacts / "evals.png", full_page=True)
    await page.click("text=classifier-evals")
    await page.click("#run-eval")
    aggregate = page.locator("#eval-aggregate")
    await aggregate.wait_for(timeout=60_000)
    assert (
        "Aggregate 1.000" in await aggregate.inner_text() and "3/3 cases pass" in await aggregate.inner_text()
    )
    cases = page.locator("#eval-cases tr.case")
    assert await cases.count() == 3
    contract = await page.locator("tr[data-case='contract']").inner_text()
    assert (
        "This contract binds" in contract and '"category": "contract"' in contract
    )  # input, expected, actual
    await page.click("#save-baseline")  # the name field holds "golden"
    await page.locator("#baseline-saved").wait_for()
    await page.screenshot(path=artifacts / "eval-run.png", full_page=True)

    # the deliberate change, made in the editor
    await page.goto(f"{ws.url}/workers/classifier")
    prompt = await page.locator("#system_prompt").input_value()
    await page.fill("#system_prompt", prompt + "STRICT.\n")
    await page.click("#save")
    await page.locator("#saved").wait_for()

    await page.goto(f"{ws.url}/evals/classifier-evals")
    assert await page.locator("#baseline").input_value() == "golden"
    await page.click("#run-eval")
    comparison = page.locator("#eval-comparison")
    await comparison.wait_for(timeout=60_000)
    assert "1 regressed" in await comparison.inner_text() and "2 unchanged" in await comparison.inner_text()
    assert await page.locator("tr[data-case='contract']").get_attribute("data-verdict") == "regressed"
    assert await page.locator("tr[data-case='contract'] .verdict").inner_text() == "regressed"
    assert await page.locator("tr[data-case='invoice']").get_attribute("data-verdict") == "unchanged"
    assert "STRICT" in openai.requests[-1]["messages"][0]["content"]
    await page.screenshot(path=artifacts / "eval-regression.png", full_page=True)
    assert (root / "evals" / "classifier.runs.sqlite").is_file()  # runs are stored beside the suite

    # A baseline can be removed (after confirming); its run stays among the earlier runs.
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.click("li[data-baseline='golden'] .remove-baseline")
    await page.wait_for_url(f"{ws.url}/evals/classifier-evals")
    await page.locator("#baselines li.muted").wait_for()
    assert await page.locator("#baseline option").all_inner_texts() == ["(none)"]
    assert await page.locator("#past-runs tr").count() == 1 + 2  # the header, and both runs


async def test_define_a_suite_in_the_page_and_run_it(
    tmp_path: Path, openai: FakeLLMServer, browser: Any, start_workshop: Any, artifacts: Path
) -> None:
    root = classifier_project(tmp_path / "project", openai)
    ws = await start_workshop(root)
    page = await browser.new_page()
    await page.goto(f"{ws.url}/workers/classifier")
    await page.click("#worker-evals")
    assert await page.locator("#suite-worker").input_value() == "classifier"
    await page.fill("#suite-name", "smoke")
    # a case without `expected` under the per-field scorer: refused by the suite loader, nothing written
    await page.fill("#suite-cases", "- id: one\n  input: {text: An invoice}\n")
    await page.click("#create-suite")
    refused = page.locator("#new-suite-result .problems")
    await refused.wait_for()
    assert "expected" in await refused.inner_text()
    assert not (root / "evals" / "smoke.yaml").exists()

    await page.fill(
        "#suite-cases",
        "- id: one\n  input: {text: An invoice}\n  expected: {category: invoice}\n"
        "- id: two\n  input: {text: Some news}\n  expected: {category: news}\n",
    )
    await page.click("#create-suite")
    await page.wait_for_url(f"{ws.url}/evals/smoke")
    await page.click("#run-eval")
    aggregate = page.locator("#eval-aggregate")
    await aggregate.wait_for(timeout=60_000)
    assert (
        "Aggregate 1.000" in await aggregate.inner_text() and "2/2 cases pass" in await aggregate.inner_text()
    )
    await page.screenshot(path=artifacts / "suite-created-and-run.png", full_page=True)
    written = (root / "evals" / "smoke.yaml").read_text()
    assert "worker: classifier" in written and "type: fields" in written and "type: schema" in written
