"""Processor workers: non-LLM Python backends behind the original Loom's interface.

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
from loom.errors import InvalidOutput, TaskError
from loom.messages import TaskMessage, TokenUsage
from loom.worker.engine import TaskEngine, WorkOutcome


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


class ProcessorEngine(TaskEngine):
    """Runs a ProcessingBackend for each task; maps its result and errors onto the runtime's types."""

    def __init__(self, spec: WorkerSpec, backend: ProcessingBackend | None = None):
        self.spec = spec
        self.backend = backend if backend is not None else load_backend(spec)
        self.config = spec.model_dump(mode="json")
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        if isinstance(self.backend, SyncProcessingBackend):
            self._executor = ThreadPoolExecutor(
                max_workers=max(1, min(self.spec.max_in_flight, 32)),
                thread_name_prefix=f"loom-{self.spec.name}",
            )
            self.backend._executor = self._executor

    async def close(self) -> None:
        await self.backend.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def run(self, task: TaskMessage) -> WorkOutcome:
        try:
            result = await self.backend.process(task.payload, dict(self.config))
        except BackendError as exc:
            raise TaskError(str(exc), code=exc.code, retryable=exc.retryable) from exc
        except TaskError:
            raise
        except Exception as exc:
            raise TaskError(f"{type(exc).__name__}: {exc}", code="backend_crash", retryable=True) from exc
        if not isinstance(result, dict) or not isinstance(result.get("output"), dict):
            raise InvalidOutput(
                f"{self.spec.processing_backend} must return {{'output': {{...}}, 'model_used': ...}}, "
                f"got {type(result).__name__}"
                + (
                    f" with output of type {type(result.get('output')).__name__}"
                    if isinstance(result, dict)
                    else ""
                )
            )
        usage = result.get("token_usage")
        return WorkOutcome(
            output=result["output"],
            model_used=result.get("model_used"),
            token_usage=TokenUsage.model_validate(usage) if usage else TokenUsage(),
        )
