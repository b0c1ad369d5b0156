"""The processing-backend contract: what a processor worker runs, and what the MCP gateway and the
contrib packages build on. It sits below the roles, so a role can use a backend without importing
another role (``loom.worker.processor`` re-exports these names, the original Loom's import path).

A backend is configured by class path (``processing_backend``) and built with
``backend_config`` as keyword arguments. ``process(payload, config)`` returns
``{"output": {...}, "model_used": "..."}``; raise :class:`BackendError` for a
failure the backend understands (``retryable=True`` when trying again may help).
"""

from __future__ import annotations

import asyncio
import inspect
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from loom.api.loader import import_object
from loom.api.worker import WorkerSpec


class BackendError(Exception):
    """A backend could not process a payload. Not retried unless ``retryable`` is true."""

    retryable: bool = False
    code: str = "backend_error"

    def __init__(self, message: str, *, retryable: bool | None = None, code: str | None = None):
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable
        if code is not None:
            self.code = code


class ProcessingBackend(ABC):
    """Async backend: ``await process(payload, config)``."""

    @abstractmethod
    async def process(self, payload: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        """Return ``{"output": {...}, "model_used": "..."}`` (``token_usage`` optional)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources at shutdown."""


class SyncProcessingBackend(ProcessingBackend):
    """Blocking/CPU-bound backend: ``process_sync`` runs in a thread pool so the event loop stays free."""

    _executor: ThreadPoolExecutor | None = None

    @abstractmethod
    def process_sync(self, payload: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        """Return ``{"output": {...}, "model_used": "..."}``."""

    async def process(self, payload: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.process_sync, payload, config)


def load_backend(spec: WorkerSpec) -> ProcessingBackend:
    """Import and build the backend; configuration errors are raised at start-up, not per task."""
    if not spec.processing_backend:
        raise ValueError(f"worker {spec.name!r} has no processing_backend")
    cls = import_object(spec.processing_backend)
    if not (inspect.isclass(cls) and issubclass(cls, ProcessingBackend)):
        raise TypeError(f"{spec.processing_backend} is not a ProcessingBackend subclass")
    try:
        return cls(**spec.backend_config)
    except TypeError as exc:
        raise TypeError(
            f"cannot build {spec.processing_backend} with backend_config {sorted(spec.backend_config)}: {exc}"
        ) from exc
