"""Pipelines in the page: the stage graph drawn by levels, a stage edit that redraws it (and a broken
one refused), and a goal run on a real system (NATS, router, worker, pipeline processes) with its
stage timeline."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import LoomProcesses, loom_procs
from tests.workshop.conftest import copy_samples

__all__ = ["loom_procs"]

pytestmark = pytest.mark.integration

FACTS = """\
# Two passes of the extractor; the second only when the first found words.
apiVersion: loom.dev/v1alpha1
kind: Pipeline
metadata:
  name: facts
spec:
  pipelineStages:
    - name: extract
      workerType: doc-extractor
      inputMapping: {text: goal.context.text}
    - name: again
      workerType: doc-extractor
      inputMapping: {text: extract.output.excerpt}
      condition: extract.output.word_count != 0
"""


async def levels(page: Any) -> dict[str, str]:
    stages = page.locator("#graph-box g.stage")
    return {
        await stages.nth(i).get_attribute("data-stage"): await stages.nth(i).get_attribute("data-level")
        for i in range(await stages.count())
    }


async def test_graph_changes_after_a_stage_edit_and_a_broken_edit_is_refused(
    tmp_path: Path, browser: Any, start_workshop: Any, artifacts: Path
) -> None:
    root = tmp_path / "project"
    copy_samples(
        root,
        "pipeline-doc-analysis.yaml",
        "worker-doc-extractor.yaml",
        "worker-doc-classifier.yaml",
        "worker-doc-summarizer.yaml",
        "worker-report-assembler.yaml",
        "router-policy.yaml",
    )
    ws = await start_workshop(root)
    page = await browser.new_page()
    await page.goto(f"{ws.url}/pipelines")
    assert "4 stages in 3 levels" in await page.locator(".pipeline").inner_text()
    await page.screenshot(path=artifacts / "pipelines.png", full_page=True)
    await page.click("text=doc-analysis")
    # classify and summarise both read only extract's output: one level, in parallel
    assert await levels(page) == {"extract": "0", "classify": "1", "summarise": "1", "report": "2"}
    assert await page.locator("path[data-edge='extract->summarise']").count() == 1

    stage = page.locator("#stage-summarise")
    await stage.locator("summary").click()
    # a dependency on a stage that does not exist: refused, nothing written
    before = (root / "pipeline-doc-analysis.yaml").read_text()
    await stage.locator("input[name='depends_on']").fill("extract, nope")
    await stage.locator(".save-stage").click()
    refused = stage.locator(".problems")
    await refused.wait_for()
    assert "dependsOn names unknown stage 'nope'" in await refused.inner_text()
    assert (root / "pipeline-doc-analysis.yaml").read_text() == before

    # summarise after classify, only for invoices: a new level and a dashed (conditional) edge
    await stage.locator("input[name='depends_on']").fill("extract, classify")
    await stage.locator("input[name='condition']").fill("classify.output.category == 'invoice'")
    await stage.locator(".save-stage").click()
    await stage.locator("#saved").wait_for()
    assert await levels(page) == {"extract": "0", "classify": "1", "summarise": "2", "report": "3"}
    edge = page.locator("path[data-edge='classify->summarise']")
    assert await edge.get_attribute("stroke-dasharray") == "5,4"
    assert "[extract] → [classify] → [summarise] → [report]" in await page.locator("#levels").inner_text()
    await page.screenshot(path=artifacts / "pipeline-edited.png", full_page=True)
    saved = (root / "pipeline-doc-analysis.yaml").read_text()
    assert saved.startswith("# extract ──┬── classify ──┬── report\n")  # the file's comments are kept
    assert "      dependsOn:\n        - extract\n        - classify\n" in saved
    await page.reload()  # the page reads the file again: the same graph
    assert await levels(page) == {"extract": "0", "classify": "1", "summarise": "2", "report": "3"}

    # a new parallel branch (it reads only the goal), then removing a stage others still read: refused
    await page.fill(
        "#stage_yaml", "name: titles\nworkerType: doc-extractor\ninputMapping:\n  text: goal.context.title\n"
    )
    await page.select_option("#after", "extract")
    await page.click("#add-stage-button")
    await page.locator("#add-result #saved").wait_for()
    assert (await levels(page))["titles"] == "0"
    assert await page.locator("#graph-box g.stage").count() == 5
    await page.reload()
    await page.select_option("#remove-which", "extract")
    await page.click("#remove-stage-button")
    refused = page.locator("#remove-result .problems")
    await refused.wait_for()
    assert "path 'extract.output.title' reads unknown stage 'extract'" in await refused.inner_text()
    await page.select_option("#remove-which", "titles")
    await page.click("#remove-stage-button")
    await page.locator("#remove-result #saved").wait_for()
    assert "titles" not in await levels(page)


async def test_run_a_goal_and_watch_the_stage_timeline(
    tmp_path: Path,
    nats_url: str,
    loom_procs: LoomProcesses,
    browser: Any,
    start_workshop: Any,
    artifacts: Path,
) -> None:
    root = tmp_path / "project"
    copy_samples(root, "worker-doc-extractor.yaml")
    (root / "pipeline-facts.yaml").write_text(FACTS)
    worker = str(root / "worker-doc-extractor.yaml")
    started = [
        loom_procs.spawn("router", "--config", worker, ready=False),
        loom_procs.spawn("worker", "--config", worker, ready=False),
        loom_procs.spawn("pipeline", "--config", str(root / "pipeline-facts.yaml"), ready=False),
    ]
    await asyncio.gather(*(asyncio.to_thread(p.wait_ready) for p in started))
    ws = await start_workshop(root, "--nats-url", nats_url)
    page = await browser.new_page()
    await page.goto(f"{ws.url}/pipelines/facts")
    await page.fill("#context", json.dumps({"text": "Invoice 12 is due on 2024-01-02. Pay it."}))
    await page.click("#run-goal")
    status = page.locator("#goal-status")
    await status.wait_for(timeout=60_000)
    assert "Goal completed" in await status.inner_text()
    events = page.locator("#timeline tr.event")
    assert [await events.nth(i).get_attribute("data-stage") for i in range(await events.count())] == [
        "extract",
        "again",
    ]
    assert {await events.nth(i).get_attribute("data-status") for i in range(2)} == {"completed"}
    records = await page.locator("#stage-records").inner_text()
    assert "extract" in records and "again" in records
    output = json.loads(await page.locator("#goal-output").inner_text())
    assert output["again"]["dates"] == ["2024-01-02"]
    await page.screenshot(path=artifacts / "pipeline-run.png", full_page=True)


async def test_pages_needing_a_running_system_say_so(
    tmp_path: Path, browser: Any, start_workshop: Any
) -> None:
    root = tmp_path / "project"
    copy_samples(root, "worker-doc-extractor.yaml")
    (root / "pipeline-facts.yaml").write_text(FACTS)
    ws = await start_workshop(root)
    page = await browser.new_page()
    await page.goto(f"{ws.url}/pipelines/facts")
    assert "start the Workshop with --nats-url URL" in await page.locator("#run").inner_text()
    await page.goto(f"{ws.url}/dead-letters")
    assert "start the Workshop with --nats-url URL" in await page.locator("main").inner_text()
