"""Browser tests of the Workshop: the real ``loom workshop`` process, real headless Chromium (Debian's
``chromium``, driven by Playwright), fake model providers speaking the real wire formats, and (slow)
the real local model.

Screenshots of every page a test visits are kept under ``$LOOM_TEST_ARTIFACTS/workshop/<test>/``
(default: the test's ``tmp_path``/screenshots).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loom.ports import free_port

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]


class Workshop:
    """A ``loom workshop`` process serving one project folder."""

    def __init__(self, root: Path, *args: str, env: dict[str, str] | None = None):
        self.root = root
        self.args = args
        self.env = env or {}
        self.port = free_port()
        self.log_path = root.parent / f"workshop-{self.port}.log"
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def start(self) -> Workshop:
        log = open(self.log_path, "wb")  # noqa: SIM115, ASYNC230 - lives as long as the process
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "loom.cli.main",
            "workshop",
            str(self.root),
            "--port",
            str(self.port),
            *self.args,
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            start_new_session=True,
        )
        async with httpx.AsyncClient() as client:
            for _ in range(400):
                if self.proc.returncode is not None:
                    raise RuntimeError(f"loom workshop exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    if (await client.get(f"{self.url}/workers", timeout=1)).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError(f"loom workshop not serving after 20 s:\n{self.log()}")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@pytest.fixture
def artifacts(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Where this test's screenshots go."""
    base = os.environ.get("LOOM_TEST_ARTIFACTS")
    directory = (Path(base) / "workshop" / request.node.name) if base else tmp_path / "screenshots"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture
def chromium() -> str:
    """Debian's chromium (`bash hack/test-setup.sh browser` installs it); missing fails, never skips."""
    if not os.path.isfile(CHROMIUM):
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's chromium; "
            "run `bash hack/test-setup.sh browser`"
        )
    return CHROMIUM


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Any]:
    """Headless Chromium driven by Playwright (pointed at the system browser: nothing is downloaded)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def start_workshop() -> AsyncIterator[Any]:
    """Start ``loom workshop`` on a folder; every one started is stopped after the test."""
    started: list[Workshop] = []

    async def start(root: Path, *args: str, env: dict[str, str] | None = None) -> Workshop:
        ws = await Workshop(root, *args, env=env).start()
        started.append(ws)
        return ws

    yield start
    for ws in started:
        await ws.stop()


def copy_samples(dest: Path, *names: str) -> None:
    """Copy sample manifests (config/samples) into a project folder."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(ROOT / "config" / "samples" / name, dest / name)
