"""The MCP gateway's config and the tools derived from it (pure: no NATS, no MCP SDK).

One YAML file names worker and pipeline configs (plain Loom YAML or manifests) and
query backends; each becomes MCP tools with typed input schemas:

- a worker tool takes the worker's ``input_schema`` and submits a task through the
  router (``loom.tasks.incoming``);
- a pipeline tool takes the ``goal.context`` keys its stages read and submits a goal
  to ``loom.goals.<pipeline>``;
- a query entry runs a processing backend inside the gateway (e.g. DuckDBQueryBackend on
  a local file): each listed action is a tool ``{name_prefix}_{action}`` whose schema comes
  from the backend's ``action_schema(action)`` (its filter fields, stats groups, ...).

Relative config paths are looked up beside the gateway file first, then in the
current directory (where the original Loom resolved them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from loom.api.common import TierName
from loom.api.loader import LoadError, format_validation_error, import_object, load_one, resolve_schema_refs
from loom.api.pipeline import CONDITION_RE, PipelineSpec, execution_levels
from loom.api.worker import CLASS_PATH_PATTERN, WorkerSpec
from loom.backends import BackendError, ProcessingBackend

#: What MCP clients accept as a tool name.
TOOL_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,128}$"
#: Extra seconds a caller waits beyond the work's own limits (routing, queueing, result delivery).
WAIT_MARGIN_SECONDS = 10.0


class GatewayConfigError(ValueError):
    """Every problem found in a gateway config, each naming where it is."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class WorkerToolEntry(_Model):
    """A worker exposed as a tool."""

    config: str = Field(min_length=1, description="Worker config file (plain YAML or manifest).")
    name: str | None = Field(default=None, pattern=TOOL_NAME_PATTERN, description="Tool name override.")
    description: str | None = Field(default=None, description="Tool description override.")
    tier: TierName | None = Field(default=None, description="Model tier (unset: the router decides).")
    timeout_seconds: float | None = Field(default=None, gt=0, description="How long a call waits (seconds).")


class PipelineToolEntry(_Model):
    """A pipeline exposed as a tool."""

    config: str = Field(min_length=1, description="Pipeline config file (plain YAML or manifest).")
    name: str | None = Field(
        default=None, pattern=TOOL_NAME_PATTERN, description="Tool name (default: the pipeline's name)."
    )
    description: str | None = Field(default=None, description="Tool description override.")
    timeout_seconds: float | None = Field(default=None, gt=0, description="How long a call waits (seconds).")


class QueryToolEntry(_Model):
    """A processing backend run inside the gateway, one tool per action."""

    backend: str = Field(pattern=CLASS_PATH_PATTERN, description="ProcessingBackend class path.")
    actions: list[str] = Field(min_length=1, description="Actions exposed, each as {name_prefix}_{action}.")
    name_prefix: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$", description="Tool name prefix.")
    backend_config: dict[str, Any] = Field(default_factory=dict, description="Backend keyword arguments.")
    description: str | None = Field(default=None, description="Prefix of every tool's description.")

    @field_validator("actions")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("actions are listed twice")
        return value


class ToolsConfig(_Model):
    """The ``tools`` section."""

    workers: list[WorkerToolEntry] = Field(default_factory=list)
    pipelines: list[PipelineToolEntry] = Field(default_factory=list)
    queries: list[QueryToolEntry] = Field(default_factory=list)


class ResourcesConfig(_Model):
    """The ``resources`` section: workspace files published as ``workspace:///`` resources."""

    workspace_dir: str = Field(min_length=1)
    patterns: list[str] = Field(default_factory=lambda: ["*"], description="Gitignore-style globs.")


class GatewayConfig(_Model):
    """The whole gateway file."""

    name: str = Field(min_length=1)
    description: str = ""
    nats_url: str | None = None
    tenant: str = Field(default="default", min_length=1, max_length=128)
    tools: ToolsConfig = Field(default_factory=ToolsConfig)
    resources: ResourcesConfig | None = None


@dataclass(frozen=True)
class ToolDef:
    """One MCP tool and what a call to it submits."""

    name: str
    description: str
    input_schema: dict[str, Any]
    kind: Literal["worker", "pipeline", "query"]
    target: str  # worker type, pipeline name or query action
    timeout_seconds: float
    tier: str | None = None
    source: str = ""
    #: Pipeline tools: the tool argument that becomes the goal's instruction, if any stage reads it.
    instruction_arg: str | None = None
    #: Query tools: the index of their entry in ``GatewayPlan.backends``.
    backend_index: int | None = None


@dataclass(frozen=True)
class GatewayPlan:
    """A loaded gateway: its config, its tools and where its workspace is."""

    config: GatewayConfig
    tools: dict[str, ToolDef]
    workspace_dir: Path | None = None
    patterns: tuple[str, ...] = field(default_factory=tuple)
    #: The query entries' backends, built from their ``backend_config`` (in config order).
    backends: tuple[ProcessingBackend, ...] = field(default_factory=tuple)


def first_line(text: str | None) -> str:
    """The first non-empty line of ``text``, stripped."""
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


def worker_tool(entry: WorkerToolEntry, spec: WorkerSpec, source: str = "") -> ToolDef:
    """The tool of one worker: name, description and input schema as the original Loom derived them."""
    spec = resolve_schema_refs(spec)
    name = entry.name or spec.worker_type
    description = (
        entry.description
        or spec.description.strip()
        or first_line(spec.system_prompt)
        or f"Run the Loom worker {spec.worker_type}."
    )
    schema = dict(spec.input_schema) if spec.input_schema is not None else {"type": "object"}
    root_type = schema.get("type", "object")
    if root_type != "object":
        raise ValueError(f"{spec.worker_type}: input_schema must describe an object, not {root_type!r}")
    schema["type"] = "object"
    backoffs = spec.retry_backoff_seconds or [0.0]
    waits = sum(backoffs[min(i, len(backoffs) - 1)] for i in range(spec.max_deliver - 1))
    timeout = entry.timeout_seconds or spec.timeout_seconds * spec.max_deliver + waits + WAIT_MARGIN_SECONDS
    return ToolDef(
        name=name, description=description, input_schema=schema, kind="worker", target=spec.worker_type,
        timeout_seconds=timeout, tier=entry.tier, source=source,
    )


def goal_context_keys(spec: PipelineSpec) -> tuple[dict[str, list[tuple[str, str]]], set[str], bool]:
    """Context keys the stages read: key -> [(stage, payload field or ''), ...]; keys the first
    stages read; whether any stage reads ``goal.instruction``."""
    first = set(execution_levels(spec)[0])
    readers: dict[str, list[tuple[str, str]]] = {}
    required: set[str] = set()
    instruction = False
    for stage in spec.pipeline_stages:
        paths = list(stage.input_mapping.items())
        if stage.condition and (m := CONDITION_RE.match(stage.condition)):
            paths.append(("", m.group("path")))
        for key, path in paths:
            parts = path.split(".")
            if parts[:2] == ["goal", "instruction"]:
                instruction = True
            if len(parts) >= 3 and parts[:2] == ["goal", "context"]:
                context_key = parts[2]
                readers.setdefault(context_key, []).append((stage.name, key if len(parts) == 3 else ""))
                if stage.name in first and key and not stage.condition:
                    required.add(context_key)
    return readers, required, instruction


def pipeline_tool(
    entry: PipelineToolEntry,
    spec: PipelineSpec,
    pipeline_name: str,
    worker_schemas: dict[str, dict[str, Any]] | None = None,
    source: str = "",
) -> ToolDef:
    """The tool of one pipeline: one property per ``goal.context`` key its stages read.

    Keys read by the first stages (no condition) are required. A key mapped straight into
    a payload field of a worker this gateway also exposes takes that field's schema.
    """
    readers, required, reads_instruction = goal_context_keys(spec)
    properties: dict[str, Any] = {}
    for key, uses in readers.items():
        prop: dict[str, Any] = {}
        for stage_name, payload_field in uses:
            stage = next(s for s in spec.pipeline_stages if s.name == stage_name)
            field_schema = ((worker_schemas or {}).get(stage.worker_type) or {}).get("properties", {})
            if payload_field and isinstance(field_schema.get(payload_field), dict):
                prop = dict(field_schema[payload_field])
                break
        where = ", ".join(f"{s}.{f}" if f else s for s, f in uses)
        prop.setdefault("description", f"goal.context.{key} (read by {where})")
        properties[key] = prop
    instruction_arg = None
    if reads_instruction:
        instruction_arg = "instruction" if "instruction" not in properties else "goal_instruction"
        properties[instruction_arg] = {"type": "string", "description": "The goal's instruction."}
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = sorted(required)
    description = entry.description or spec.description.strip() or f"Run the Loom pipeline {pipeline_name}."
    timeout = entry.timeout_seconds or spec.timeout_seconds + WAIT_MARGIN_SECONDS
    return ToolDef(
        name=entry.name or pipeline_name, description=description, input_schema=schema, kind="pipeline",
        target=pipeline_name, timeout_seconds=timeout, source=source, instruction_arg=instruction_arg,
    )


def build_query_backend(entry: QueryToolEntry) -> ProcessingBackend:
    """The entry's backend, built with its ``backend_config`` (TypeError, ValueError: why not)."""
    cls = import_object(entry.backend)
    if not (isinstance(cls, type) and issubclass(cls, ProcessingBackend)):
        raise TypeError(f"{entry.backend} is not a ProcessingBackend subclass")
    try:
        return cls(**entry.backend_config)
    except TypeError as exc:
        raise TypeError(f"cannot build {entry.backend} with backend_config "
                        f"{sorted(entry.backend_config)}: {exc}") from exc


def query_tools(entry: QueryToolEntry, backend: ProcessingBackend, index: int) -> list[ToolDef]:
    """One tool per action. The schema comes from ``backend.action_schema(action)`` when the backend has
    one (DuckDBQueryBackend does); an action it does not know is refused here, not at the first call."""
    schema_of = getattr(backend, "action_schema", None)
    tools = []
    for action in entry.actions:
        schema = dict(schema_of(action)) if callable(schema_of) else {"type": "object"}
        label = f"{entry.description}: " if entry.description else ""
        tools.append(ToolDef(
            name=f"{entry.name_prefix}_{action}", description=f"{label}{action} ({entry.backend})",
            input_schema=schema, kind="query", target=action, timeout_seconds=WAIT_MARGIN_SECONDS,
            source=entry.backend, backend_index=index,
        ))
    return tools


def resolve_config_path(ref: str, base_dir: Path) -> Path:
    """A referenced config file: absolute as given; relative beside the gateway file, else in the cwd."""
    path = Path(ref).expanduser()
    if path.is_absolute():
        return path
    beside = base_dir / path
    return beside if beside.exists() or not path.exists() else path


def parse_config(doc: Any, source: str = "<gateway>") -> GatewayConfig:
    """Validate a gateway document; raises GatewayConfigError naming every problem."""
    if not isinstance(doc, dict):
        raise GatewayConfigError([f"{source}: expected a mapping, got {type(doc).__name__}"])
    try:
        return GatewayConfig.model_validate(doc)
    except ValidationError as exc:
        lines = format_validation_error(exc, "gateway")
        raise GatewayConfigError([f"{source}: {line}" for line in lines]) from None


def build_plan(config: GatewayConfig, base_dir: Path, source: str = "<gateway>") -> GatewayPlan:
    """Load every referenced config and derive the tools; raises GatewayConfigError with all problems."""
    problems: list[str] = []
    tools: dict[str, ToolDef] = {}
    worker_schemas: dict[str, dict[str, Any]] = {}

    def add(tool: ToolDef, where: str) -> None:
        if not re.match(TOOL_NAME_PATTERN, tool.name):
            problems.append(f"{where}: {tool.name!r} is not a valid tool name (set name:)")
        elif tool.name in tools:
            problems.append(f"{where}: tool name {tool.name!r} is already used by {tools[tool.name].source}")
        else:
            tools[tool.name] = tool

    for i, wentry in enumerate(config.tools.workers):
        where = f"{source}: tools.workers[{i}]"
        path = resolve_config_path(wentry.config, base_dir)
        try:
            res = load_one(path, "Worker")
            spec = res.spec if res.spec.name else res.spec.model_copy(update={"name": res.name})
            tool = worker_tool(wentry, spec, str(path))
        except LoadError as exc:
            problems += [f"{where}: {p}" for p in exc.problems]
            continue
        except (ImportError, TypeError, ValueError) as exc:
            problems.append(f"{where}: {path}: {exc}")
            continue
        worker_schemas[tool.target] = tool.input_schema
        add(tool, where)

    for i, pentry in enumerate(config.tools.pipelines):
        where = f"{source}: tools.pipelines[{i}]"
        path = resolve_config_path(pentry.config, base_dir)
        try:
            res = load_one(path, "Pipeline")
        except LoadError as exc:
            problems += [f"{where}: {p}" for p in exc.problems]
            continue
        add(pipeline_tool(pentry, res.spec, res.spec.name or res.name, worker_schemas, str(path)), where)

    backends: list[ProcessingBackend] = []
    for i, qentry in enumerate(config.tools.queries):
        where = f"{source}: tools.queries[{i}]"
        try:
            backend = build_query_backend(qentry)
            derived = query_tools(qentry, backend, len(backends))
        except (ImportError, TypeError, ValueError, AttributeError, BackendError) as exc:
            problems.append(f"{where}: {exc}")
            continue
        backends.append(backend)
        for tool in derived:
            add(tool, where)

    if not tools:
        problems.append(f"{source}: no tools: list workers, pipelines or queries under tools:")
    workspace: Path | None = None
    patterns: tuple[str, ...] = ()
    if config.resources is not None:
        workspace = Path(config.resources.workspace_dir).expanduser()
        if not workspace.is_absolute():
            workspace = base_dir / workspace
        if not workspace.is_dir():
            problems.append(f"{source}: resources.workspace_dir: {workspace} is not a directory")
        patterns = tuple(config.resources.patterns)
    if problems:
        raise GatewayConfigError(problems)
    return GatewayPlan(
        config=config, tools=tools, workspace_dir=workspace, patterns=patterns, backends=tuple(backends)
    )


def load_gateway(path: str | Path) -> GatewayPlan:
    """Read a gateway file and everything it references."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise GatewayConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise GatewayConfigError([f"{path}: invalid YAML: {exc}"]) from None
    return build_plan(parse_config(doc, str(path)), path.resolve().parent, str(path))


def tool_message_fields(tool: ToolDef, arguments: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(instruction, context-or-payload) for a call: pipeline tools lift their instruction argument out."""
    if tool.instruction_arg and tool.instruction_arg in arguments:
        rest = {k: v for k, v in arguments.items() if k != tool.instruction_arg}
        return str(arguments[tool.instruction_arg]), rest
    return "", dict(arguments)


def argument_validator(tool: ToolDef) -> Any:
    """A JSON Schema validator for the tool's arguments (build once per tool)."""
    from jsonschema import Draft202012Validator

    return Draft202012Validator(tool.input_schema)


def argument_problems(tool: ToolDef, arguments: dict[str, Any], validator: Any = None) -> list[str]:
    """Why ``arguments`` do not fit the tool's input schema (empty when they do)."""
    validator = validator or argument_validator(tool)
    return [
        f"{'/'.join(str(p) for p in err.absolute_path) or '(arguments)'}: {err.message}"
        for err in sorted(validator.iter_errors(arguments), key=lambda e: list(e.absolute_path))
    ]
