"""The Worker custom resource: one narrowly scoped, stateless actor type.

Field names follow the original Loom's worker YAML (snake_case accepted),
published in camelCase. ``name`` is the worker type used in task messages and
subjects; in a manifest it defaults to ``metadata.name``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from loom.api.common import (
    ResourceRequirements,
    SpecModel,
    TierName,
    WorkerType,
    cel,
    with_validations,
)
from loom.api.text import DESCRIPTION_MAX_CHARS, PROMPT_MAX_CHARS, PromptText

CLASS_PATH_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$"


class KnowledgeSource(SpecModel):
    """A file injected into the system prompt."""

    path: str = Field(min_length=1, description="File path (relative to the config file, or absolute).")
    inject_as: Literal["reference", "few_shot"] = Field(
        default="reference",
        description="reference: prepend the file with a header; few_shot: format YAML/JSONL examples.",
    )


class KnowledgeSilo(SpecModel):
    """A folder of knowledge (read or read-write) or a tool the model may call."""

    model_config = with_validations(
        SpecModel.model_config,
        [
            cel("self.type != 'folder' || has(self.path)", "a folder silo needs path"),
            cel("self.type != 'tool' || has(self.provider)", "a tool silo needs provider (a class path)"),
        ],
    )

    name: str = Field(min_length=1, max_length=63, description="Silo name, referenced by silo_updates.")
    type: Literal["folder", "tool"] = Field(description="folder: files in a directory; tool: a ToolProvider.")
    path: str | None = Field(default=None, description="Folder path (type folder).")
    mode: Literal["read", "readwrite"] = Field(
        default="read", description="readwrite lets the model add, modify and delete files via silo_updates."
    )
    provider: str | None = Field(
        default=None, pattern=CLASS_PATH_PATTERN, description="ToolProvider class path (type tool)."
    )
    config: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for the tool provider's constructor."
    )

    @model_validator(mode="after")
    def _kind_fields(self) -> KnowledgeSilo:
        if self.type == "folder" and not self.path:
            raise ValueError("a folder silo needs path")
        if self.type == "tool" and not self.provider:
            raise ValueError("a tool silo needs provider (a class path)")
        return self


class Autoscaling(SpecModel):
    """KEDA-style scaling of one tier's Deployment on its JetStream consumer lag."""

    model_config = with_validations(
        SpecModel.model_config,
        [
            cel("self.minReplicas <= self.maxReplicas", "minReplicas must be <= maxReplicas"),
        ],
    )

    enabled: bool = Field(default=True, description="Scale on queue depth; false uses spec.replicas.")
    min_replicas: int = Field(default=1, ge=0, le=1000, description="Lower bound; 0 allows scale to zero.")
    max_replicas: int = Field(default=5, ge=1, le=1000, description="Upper bound.")
    target_lag: int = Field(
        default=10, ge=1, description="Pending + unacknowledged tasks one replica is expected to carry."
    )
    activation_lag: int = Field(
        default=0, ge=0, description="Lag above which a tier at zero replicas is woken up."
    )
    cooldown_seconds: int = Field(
        default=300, ge=0, le=86400, description="Quiet time before scaling down (and to zero)."
    )
    polling_seconds: int = Field(default=15, ge=1, le=3600, description="How often lag is read.")

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must be <= maxReplicas")
        return self


_WORKER_RULES = [
    cel(
        "self.workerKind != 'processor' || has(self.processingBackend)",
        "processor workers need processingBackend (a class path)",
    ),
    cel("self.workerKind != 'llm' || has(self.systemPrompt)", "LLM workers need systemPrompt"),
    cel("self.resetAfterTask == true", "resetAfterTask must be true: workers are stateless"),
    cel(
        "size(self.resolveFileRefs) == 0 || has(self.workspaceDir)",
        "resolveFileRefs requires workspaceDir",
    ),
    cel(
        "size(self.tiers) == 0 || self.defaultModelTier in self.tiers",
        "defaultModelTier must be one of tiers",
    ),
    cel(
        "!(has(self.inputSchema) && has(self.inputSchemaRef))",
        "set inputSchema or inputSchemaRef, not both",
    ),
    cel(
        "!(has(self.outputSchema) && has(self.outputSchemaRef))",
        "set outputSchema or outputSchemaRef, not both",
    ),
]


class WorkerSpec(SpecModel):
    """A worker type: its prompt or backend, its I/O contracts, the tiers it serves and how it scales."""

    model_config = with_validations(SpecModel.model_config, _WORKER_RULES)

    name: WorkerType | None = Field(
        default=None,
        description="Worker type used in task messages and subjects; defaults to metadata.name.",
    )
    description: str = Field(
        default="", max_length=DESCRIPTION_MAX_CHARS, description="Human-readable description."
    )
    worker_kind: Literal["llm", "processor"] = Field(default="llm", description="llm or processor.")
    system_prompt: PromptText | None = Field(
        default=None,
        description=f"The system prompt (LLM workers), at most {PROMPT_MAX_CHARS} characters: "
        "large reference material belongs in knowledge files.",
    )
    processing_backend: str | None = Field(
        default=None,
        pattern=CLASS_PATH_PATTERN,
        description="ProcessingBackend class path (processor workers).",
    )
    backend_config: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for the backend's constructor."
    )
    input_schema: dict[str, Any] | None = Field(default=None, description="JSON Schema of the task payload.")
    output_schema: dict[str, Any] | None = Field(default=None, description="JSON Schema of the output.")
    input_schema_ref: str | None = Field(
        default=None, pattern=CLASS_PATH_PATTERN, description="Pydantic model path for the input schema."
    )
    output_schema_ref: str | None = Field(
        default=None, pattern=CLASS_PATH_PATTERN, description="Pydantic model path for the output schema."
    )
    default_model_tier: TierName = Field(default="standard", description="Tier used when a task names none.")
    tiers: list[TierName] = Field(
        default_factory=list,
        max_length=10,
        description="Tiers this worker serves, one Deployment each; empty means [defaultModelTier].",
    )
    max_input_tokens: int = Field(
        default=4000, gt=0, description="Input token budget, checked before a call."
    )
    max_output_tokens: int = Field(default=2000, gt=0, description="Output token budget per model call.")
    knowledge_sources: list[KnowledgeSource] = Field(
        default_factory=list, max_length=50, description="Files injected into the system prompt."
    )
    knowledge_silos: list[KnowledgeSilo] = Field(
        default_factory=list, max_length=50, description="Knowledge folders (read/readwrite) and tools."
    )
    workspace_dir: str | None = Field(default=None, description="Workspace directory for file refs.")
    resolve_file_refs: list[str] = Field(
        default_factory=list, max_length=50, description="Payload fields resolved as workspace files."
    )
    reset_after_task: bool = Field(default=True, description="Must be true: no state survives a task.")
    timeout_seconds: float = Field(default=60, gt=0, le=86400, description="Per-task time limit.")
    max_in_flight: int = Field(
        default=8,
        ge=1,
        le=10000,
        description=(
            "Tasks one process works on at once. From 4 up, a quarter more (at most half a pull batch) "
            "wait pulled ahead, so a finished task's slot is refilled at once."
        ),
    )
    max_deliver: int = Field(
        default=3, ge=1, le=100, description="Deliveries of a task before it becomes a dead letter."
    )
    retry_backoff_seconds: list[float] = Field(
        default_factory=lambda: [1.0, 5.0, 30.0],
        max_length=20,
        description="Delay before each redelivery of a failed task (the last value repeats).",
    )
    output_retries: int = Field(
        default=2, ge=0, le=10, description="Model retries with validation errors fed back (LLM workers)."
    )
    max_tool_rounds: int = Field(default=10, ge=1, le=100, description="Tool-use rounds per task.")
    replicas: int = Field(default=1, ge=0, le=1000, description="Replicas per tier when autoscaling is off.")
    autoscaling: Autoscaling = Field(
        default_factory=Autoscaling, description="Per-tier scaling on JetStream consumer lag."
    )
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="Container requests and limits of each tier's pods."
    )
    image: str | None = Field(default=None, description="Container image; defaults to the operator's.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables.")

    @model_validator(mode="after")
    def _cross_field(self) -> WorkerSpec:
        problems = []
        if self.worker_kind == "processor" and not self.processing_backend:
            problems.append("processor workers need processingBackend (a class path)")
        if self.worker_kind == "llm" and not self.system_prompt:
            problems.append("LLM workers need systemPrompt")
        if not self.reset_after_task:
            problems.append("resetAfterTask must be true: workers are stateless")
        if self.resolve_file_refs and not self.workspace_dir:
            problems.append("resolveFileRefs requires workspaceDir")
        if self.tiers and self.default_model_tier not in self.tiers:
            problems.append("defaultModelTier must be one of tiers")
        if self.input_schema is not None and self.input_schema_ref:
            problems.append("set inputSchema or inputSchemaRef, not both")
        if self.output_schema is not None and self.output_schema_ref:
            problems.append("set outputSchema or outputSchemaRef, not both")
        for label, schema in (("inputSchema", self.input_schema), ("outputSchema", self.output_schema)):
            if schema is not None:
                problems.extend(f"{label}: {p}" for p in schema_problems(schema))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def worker_type(self) -> str:
        """The worker type (``name``); set by the loader for manifests."""
        if not self.name:
            raise ValueError("worker has no name (set spec.name or metadata.name)")
        return self.name

    @property
    def served_tiers(self) -> list[str]:
        """Tiers that get a Deployment and a consumer."""
        return list(self.tiers) or [self.default_model_tier]


def schema_problems(schema: dict[str, Any]) -> list[str]:
    """Problems with a JSON Schema itself (Draft 2020-12 meta-schema), as readable strings."""
    from jsonschema import Draft202012Validator

    # the meta-schema's vocabularies report one mistake several times over: keep each once
    lines = (
        f"{'/'.join(str(p) for p in err.absolute_path) or '(root)'}: {err.message}"
        for err in Draft202012Validator(Draft202012Validator.META_SCHEMA).iter_errors(schema)
    )
    return list(dict.fromkeys(lines))
