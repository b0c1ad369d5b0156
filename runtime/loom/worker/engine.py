"""The seam between the worker runtime (bus, acks, metrics) and what does the work.

A ``TaskEngine`` turns one validated task into an output. The runtime owns
delivery, timeouts, input/output contract checks and results; engines own the
work itself: a Python processing backend, or a model behind a provider.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from loom.api.router_policy import TierDefinition
from loom.api.worker import WorkerSpec
from loom.messages import TaskMessage, TokenUsage


@dataclass
class WorkOutcome:
    """What an engine produced for one task."""

    output: dict[str, Any]
    model_used: str | None = None
    token_usage: TokenUsage = field(default_factory=TokenUsage)
    #: The tier that answered, when a fallback tier did (None: the worker's own).
    model_tier: str | None = None


class TaskEngine(ABC):
    """Does the work of one worker type on one tier. Must hold no per-task state between tasks."""

    #: True when ``run`` itself checks the payload against the input contract and its output
    #: against the output contract; the runtime then does not validate both a second time.
    checks_contracts: bool = False

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open clients, load tools; called once before the first task."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients; called once at shutdown."""

    @abstractmethod
    async def run(self, task: TaskMessage) -> WorkOutcome:
        """Do the task. Raise ``loom.errors.TaskError`` (or a subclass) when it cannot be done."""


def build_engine(
    spec: WorkerSpec, tier: TierDefinition | None, *, base_dir: str | os.PathLike[str] | None = None
) -> TaskEngine:
    """The engine for a worker spec: processor backends or an LLM provider for the tier.

    ``base_dir`` anchors relative knowledge and silo paths (the config file's folder).
    """
    if spec.worker_kind == "processor":
        from loom.worker.processor import ProcessorEngine

        return ProcessorEngine(spec)
    from loom.worker.llm_engine import LLMEngine

    return LLMEngine(spec, tier, base_dir=base_dir)
