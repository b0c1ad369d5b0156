"""Trivial processing backends for samples, tests and benchmarks.

``NoopBackend`` returns an empty output at once: the cost of the runtime alone.
``EchoBackend`` returns the payload, and obeys a few payload keys that make it
useful for exercising the runtime: ``sleep`` (seconds), ``fail`` (a message to
raise as BackendError; ``retryable`` to allow retries), ``output`` (returned
as the output instead of the echo, e.g. to break an output schema on purpose) and
``usage`` (reported as the task's token usage, e.g. to spend a budget).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from loom.backends import BackendError, ProcessingBackend


class NoopBackend(ProcessingBackend):
    """Does nothing, successfully."""

    async def process(self, payload: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        return {"output": {}, "model_used": "noop"}


def _echo(payload: dict[str, Any], tag: str | None) -> dict[str, Any]:
    if "fail" in payload:
        raise BackendError(str(payload["fail"]), retryable=bool(payload.get("retryable", False)))
    usage = payload.get("usage")
    extra = {"token_usage": usage} if isinstance(usage, dict) else {}
    if isinstance(payload.get("output"), dict):
        return {"output": payload["output"], "model_used": "echo", **extra}
    return {"output": {"echo": payload, "tag": tag, "pid": os.getpid()}, "model_used": "echo", **extra}


class EchoBackend(ProcessingBackend):
    """Echoes the payload (see the module docstring for the keys it obeys)."""

    def __init__(self, tag: str | None = None, delay_seconds: float = 0.0):
        self.tag = tag
        self.delay_seconds = delay_seconds

    async def process(self, payload: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        delay = float(payload.get("sleep", self.delay_seconds) or 0)
        if delay > 0:
            await asyncio.sleep(delay)
        return _echo(payload, self.tag)
