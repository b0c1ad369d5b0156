"""Processor workers: non-LLM Python backends (:mod:`loom.backends`) behind the original Loom's interface.

The backend classes are re-exported here: ``from loom.worker.processor import SyncProcessingBackend``
is the original Loom's import path and keeps working.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from loom.api.worker import WorkerSpec
from loom.backends import BackendError, ProcessingBackend, SyncProcessingBackend, load_backend
from loom.errors import InvalidOutput, TaskError
from loom.messages import TaskMessage, TokenUsage
from loom.worker.engine import TaskEngine, WorkOutcome

__all__ = ["BackendError", "ProcessingBackend", "ProcessorEngine", "SyncProcessingBackend", "load_backend"]


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
