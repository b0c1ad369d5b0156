"""Dead letters in the page, against a real system (NATS, router and worker processes): list and
filter by reason, see the original and the reason, fix the payload and replay it to a result."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from loom.bus import Bus
from loom.messages import TaskMessage
from loom.subjects import TASKS_INCOMING
from tests.support.processes import LoomProcesses, bus, loom_procs, poll
from tests.workshop.conftest import copy_samples

__all__ = ["bus", "loom_procs"]

pytestmark = pytest.mark.integration


async def test_filter_fix_and_replay_a_dead_letter(
    tmp_path: Path,
    nats_url: str,
    loom_procs: LoomProcesses,
    bus: Bus,
    browser: Any,
    start_workshop: Any,
    artifacts: Path,
) -> None:
    root = tmp_path / "project"
    copy_samples(root, "worker-doc-extractor.yaml")
    worker = str(root / "worker-doc-extractor.yaml")
    started = [
        loom_procs.spawn("router", "--config", worker, ready=False),
        loom_procs.spawn("worker", "--config", worker, ready=False),
    ]
    await asyncio.gather(*(asyncio.to_thread(p.wait_ready) for p in started))
    task = TaskMessage(worker_type="doc-extractr", payload={"text": "Pay invoice 7 by 2024-03-04."})
    await bus.publish_task(task)  # a typo in the worker type
    await bus.js_publish(TASKS_INCOMING, b'{"worker_type": ')  # and a malformed message
    await poll(lambda: _count(bus, 2), timeout=30)

    ws = await start_workshop(root, "--nats-url", nats_url)
    page = await browser.new_page()
    await page.goto(f"{ws.url}/dead-letters")
    rows = page.locator("#dead-letters tr.dead-letter")
    assert await rows.count() == 2
    await page.screenshot(path=artifacts / "dead-letters.png", full_page=True)
    await page.select_option("#reason", "unknown_worker_type")
    await page.wait_for_url("**/dead-letters?reason=unknown_worker_type")
    assert await rows.count() == 1
    assert "doc-extractr" in await rows.nth(0).inner_text()
    await rows.nth(0).locator("a").click()
    assert await page.locator("#dl-reason").inner_text() == "unknown_worker_type"
    assert "doc-extractr" in await page.locator("#dl-detail").inner_text()
    body = json.loads(await page.locator("#body").input_value())
    assert body["task_id"] == task.task_id and body["payload"] == task.payload

    # a broken edit is refused; the dead letter stays
    await page.fill("#body", '{"worker_type": "doc-extractor", "payload": ')
    await page.click("#replay")
    refused = page.locator("#replay-result .problems")
    await refused.wait_for()
    assert "not JSON" in await refused.inner_text()

    body["worker_type"] = "doc-extractor"
    await page.fill("#body", json.dumps(body, indent=2))
    results = await bus.subscribe_results(task.result_key, task.tenant)
    try:
        await page.click("#replay")
        await page.locator("#replayed").wait_for()
        assert "the edited message" in await page.locator("#replayed").inner_text()
        result = json.loads(await results.get(timeout=30))
    finally:
        await results.close()
    assert result["status"] == "completed" and result["output"]["dates"] == ["2024-03-04"]
    await page.screenshot(path=artifacts / "dead-letter-replayed.png", full_page=True)
    await page.goto(f"{ws.url}/dead-letters")
    remaining = await rows.all_inner_texts()
    assert len(remaining) == 1 and "malformed" in remaining[0]  # the replayed one is gone

    # the malformed one is removed without a replay
    await rows.nth(0).locator("a").click()
    assert await page.locator("#body").input_value() == '{"worker_type": '  # shown as received
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.click("#remove")
    await page.locator("#removed").wait_for()
    assert await bus.dead_letters() == []


async def _count(bus: Bus, n: int) -> bool:
    return len(await bus.dead_letters()) >= n
