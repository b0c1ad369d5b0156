"""Processing backends for tests that run real ``loom worker`` processes.

``RecordingBackend`` appends one JSON line per call to a file shared by every
worker process of a test, so a test can count how often each stage really ran
(also across restarts) and read when each call started and ended.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from loom.backends import BackendError, ProcessingBackend


class RecordingBackend(ProcessingBackend):
    """Records each call to ``calls_file``, then answers ``{"by": tag, "in": payload}``.

    Payload keys it obeys: ``sleep`` (seconds to take), ``wait_for`` (a file that must
    exist before it answers: the test holds the call until it creates the file) and
    ``output`` (returned as the output instead, e.g. to break an output schema on purpose).
    """

    def __init__(self, calls_file: str, tag: str):
        self.calls_file = Path(calls_file)
        self.tag = tag

    def _record(self, event: str, payload: dict[str, Any]) -> None:
        line = {"tag": self.tag, "event": event, "t": time.time(), "pid": os.getpid(), "payload": payload}
        with self.calls_file.open("a", encoding="utf-8") as f:  # one short append: whole lines only
            f.write(json.dumps(line) + "\n")

    async def process(self, payload: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        self._record("start", payload)
        gate = payload.get("wait_for")
        if gate:
            await asyncio.to_thread(_wait_until_exists, Path(gate))
        delay = float(payload.get("sleep", 0) or 0)
        if delay > 0:
            await asyncio.sleep(delay)
        self._record("end", payload)
        if isinstance(payload.get("output"), dict):
            return {"output": payload["output"], "model_used": self.tag}
        return {"output": {"by": self.tag, "in": payload}, "model_used": self.tag}


def _wait_until_exists(path: Path, limit: float = 120.0) -> None:
    """Block (in a worker thread) until another process creates ``path``; fail after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not path.exists():
        if time.monotonic() > deadline:
            raise BackendError(f"{path} did not appear within {limit:g}s")
        time.sleep(0.02)


def read_calls(calls_file: Path) -> list[dict[str, Any]]:
    """Every recorded call event, in order (none when nothing ran yet)."""
    if not calls_file.exists():
        return []
    return [json.loads(line) for line in calls_file.read_text(encoding="utf-8").splitlines() if line]


def starts(calls_file: Path, tag: str | None = None) -> list[dict[str, Any]]:
    """The ``start`` events, optionally of one tag."""
    return [c for c in read_calls(calls_file) if c["event"] == "start" and (tag is None or c["tag"] == tag)]
