"""A no-op ProcessingBackend for the original Loom (loom-ai 0.9.0), used by bench_spine.py.

It is loaded by loom-ai's ``loom processor`` from its own venv (PYTHONPATH=bench/),
where ``loom.worker.processor`` is loom-ai's module of the same name.
"""

from __future__ import annotations

from typing import Any

from loom.worker.processor import ProcessingBackend


class NoopBackend(ProcessingBackend):
    """Returns an empty output at once."""

    async def process(self, payload: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        return {"output": {}, "model_used": "noop"}
