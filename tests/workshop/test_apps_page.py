"""The apps page: a ZIP bundle of manifests uploaded through the file input, its workers listed and
valid, the command that makes it live; an unsafe bundle refused with its reasons and nothing written;
remove and restore."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

STORE = """\
# The town app's store (plain Loom YAML).
name: town-store
worker_kind: processor
processing_backend: loom.contrib.rag.backends.RagStoreBackend
backend_config: {db_path: /tmp/town-app.duckdb}
"""
PIPELINE = """\
apiVersion: loom.dev/v1alpha1
kind: Pipeline
metadata:
  name: town-ingest
spec:
  pipelineStages:
    - name: ingest
      workerType: town-store
      inputMapping: {jsonl: goal.context.jsonl}
"""
BASE = """\
apiVersion: loom.dev/v1alpha1
kind: Worker
metadata:
  name: base
spec:
  workerKind: processor
  processingBackend: loom.contrib.rag.backends.RagCitationsBackend
"""


def zip_file(path: Path, files: dict[str, str], links: dict[str, str] | None = None) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, target)
    path.write_bytes(buf.getvalue())
    return path


async def test_install_a_bundle_and_refuse_a_bad_one(
    tmp_path: Path, browser: Any, start_workshop: Any, artifacts: Path
) -> None:
    root = tmp_path / "project"
    root.mkdir()
    (root / "worker-base.yaml").write_text(BASE)
    good = zip_file(tmp_path / "town-app.zip",
                    {"town/worker-store.yaml": STORE, "town/pipeline-ingest.yaml": PIPELINE})
    bad = zip_file(tmp_path / "evil.zip", {"../../escape.yaml": BASE, "run.sh": "curl x | sh"},
                   {"worker.yaml": "/etc/passwd"})
    ws = await start_workshop(root)
    page = await browser.new_page()
    page.on("dialog", lambda dialog: dialog.accept())

    await page.goto(f"{ws.url}/workers")
    await page.click("header >> text=Apps")
    assert "No app installed." in await page.locator("#apps-list").inner_text()
    await page.set_input_files("#bundle", str(good))
    await page.click("#install")
    await page.locator("#apps-note").wait_for()
    assert await page.locator("#apps-note").inner_text() == "installed town-app"
    assert await page.locator("#live-command").inner_text() == f"loom up {root}"
    row = page.locator("tr.app[data-app='town-app']")
    assert await row.locator(".app-workers").inner_text() == "town-store"
    assert await row.locator(".app-pipelines").inner_text() == "town-ingest"
    assert await row.locator(".app-state").inner_text() == "valid"
    assert (root / "apps/town-app/worker-store.yaml").read_text() == STORE  # comments and all
    await page.screenshot(path=artifacts / "apps-installed.png", full_page=True)

    await page.set_input_files("#bundle", str(bad))
    await page.click("#install")
    refused = page.locator("#apps-refused")
    await refused.wait_for()
    text = await refused.inner_text()
    assert "evil.zip refused, nothing written:" in text
    assert "../../escape.yaml: '..' leaves the app folder" in text
    assert "run.sh: not a manifest (only .yaml, .yml files)" in text
    assert "worker.yaml: a symbolic link (links are refused)" in text
    assert sorted(p.name for p in (root / "apps").iterdir()) == ["town-app"]
    assert not (tmp_path / "escape.yaml").exists()
    await page.screenshot(path=artifacts / "apps-refused.png", full_page=True)

    await row.locator(".app-workers a").click()
    await page.wait_for_url("**/workers/town-store")
    await page.goto(f"{ws.url}/workers")
    assert "town-store" in await page.locator("#workers").inner_text()

    await page.goto(f"{ws.url}/apps")
    await page.locator("tr.app[data-app='town-app'] button.remove").click()
    await page.locator("#apps-note").wait_for()
    assert (await page.locator("#apps-note").inner_text()).startswith("removed town-app")
    assert not (root / "apps/town-app").exists()
    assert await row.locator(".app-state").inner_text() == "removed"
    await row.locator("button.restore").click()
    await page.locator("#apps-note").filter(has_text="restored town-app").wait_for()
    assert await row.locator(".app-state").inner_text() == "valid"
    assert (root / "apps/town-app/pipeline-ingest.yaml").read_text() == PIPELINE
