"""The goal orchestrator's configuration (``loom orchestrator --config FILE``).

```yaml
name: research
workers:                      # worker configs (paths relative to this file) or inline worker specs
  - workers/summarizer.yaml
  - {name: extractor, worker_kind: processor, processing_backend: pkg.Backend, input_schema: {...}}
decomposer:
  tier: {name: planner, backend: openai, model: gpt-4o-mini, base_url: http://...}
  max_subtasks: 8
  feedback_rounds: 1          # re-ask the model with the validation errors this many times
synthesis: llm                # llm | merge (deterministic: outputs keyed by subtask id)
checkpoint: {backend: kv, token_threshold: 4000}      # or {backend: redis, url: redis://host:6379/0}
timeouts: {subtask_seconds: 120, goal_seconds: 600}
max_concurrent_goals: 4
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from loom.api.loader import (
    LoadError,
    format_validation_error,
    load_paths,
    parse_document,
    resolve_schema_refs,
)
from loom.api.router_policy import TierDefinition
from loom.api.worker import WorkerSpec


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class DecomposerConfig(_Model):
    tier: TierDefinition = Field(
        description="The model that decomposes goals (and synthesizes with synthesis: llm)."
    )
    max_subtasks: int = Field(default=10, ge=1, le=100)
    feedback_rounds: int = Field(
        default=1, ge=0, le=5, description="Re-asks with the validation errors fed back."
    )
    max_tokens: int = Field(default=2048, ge=64)


class CheckpointConfig(_Model):
    backend: Literal["kv", "redis"] = "kv"
    url: str | None = Field(default=None, description="redis://[:password@]host:port/db (backend redis).")
    token_threshold: int = Field(default=4000, ge=1, description="Context size that triggers a checkpoint.")
    ttl_seconds: float | None = Field(default=7 * 86400.0, gt=0)

    @model_validator(mode="after")
    def _url_for_redis(self) -> CheckpointConfig:
        if self.backend == "redis" and not self.url:
            raise ValueError("checkpoint backend redis needs url")
        return self


class Timeouts(_Model):
    subtask_seconds: float = Field(default=120.0, gt=0)
    goal_seconds: float = Field(default=600.0, gt=0)


class OrchestratorConfig(_Model):
    name: str = Field(default="orchestrator", pattern=r"^[a-z0-9]([-_a-z0-9]*[a-z0-9])?$", max_length=63)
    workers: list[str | dict[str, Any]] = Field(min_length=1)
    decomposer: DecomposerConfig
    synthesis: Literal["llm", "merge"] = "merge"
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    max_concurrent_goals: int = Field(default=4, ge=1, le=1000)


def load_catalog(config: OrchestratorConfig, base_dir: Path) -> dict[str, WorkerSpec]:
    """The workers the orchestrator may use, by worker type, with schema refs resolved."""
    specs: list[WorkerSpec] = []
    problems: list[str] = []
    for i, entry in enumerate(config.workers):
        try:
            if isinstance(entry, str):
                path = Path(entry) if Path(entry).is_absolute() else base_dir / entry
                specs += [r.spec for r in load_paths([path]) if r.kind == "Worker"]
            else:
                specs += [r.spec for r in parse_document(entry, f"workers[{i}]", 0) if r.kind == "Worker"]
        except LoadError as exc:
            problems += exc.problems
    if problems:
        raise LoadError(problems)
    catalog = {spec.worker_type: spec for spec in map(resolve_schema_refs, specs)}
    if not catalog:
        raise LoadError(["workers: no Worker found"])
    return catalog


def load_config(path: str | Path) -> tuple[OrchestratorConfig, dict[str, WorkerSpec]]:
    """Read and validate an orchestrator config and its worker catalog; LoadError lists every problem."""
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise LoadError([f"{p}: cannot read: {exc}"]) from None
    if not isinstance(doc, dict):
        raise LoadError([f"{p}: expected a mapping"])
    try:
        config = OrchestratorConfig.model_validate(doc)
    except ValidationError as exc:
        raise LoadError([f"{p}: {line}" for line in format_validation_error(exc, "orchestrator")]) from None
    return config, load_catalog(config, p.parent)
