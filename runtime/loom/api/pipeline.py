"""The Pipeline custom resource: stages wired by input mappings, run level by level.

Dependencies are inferred from ``input_mapping`` paths (``<stage>.output.*``) and
``condition`` paths, plus explicit ``depends_on``; stages whose dependencies are
met run concurrently. The graph checks here are pure so ``loom validate``, the
operator (``Stalled`` for what CEL cannot say, e.g. cycles) and the runtime agree.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from loom.api.common import (
    ResourceRequirements,
    SecretKeyRef,
    SpecModel,
    TierName,
    WorkerType,
    cel,
    with_validations,
)
from loom.api.text import CONDITION_MAX_CHARS, DESCRIPTION_MAX_CHARS

STAGE_NAME_PATTERN = r"^[a-z0-9_]([-_a-z0-9]*[a-z0-9_])?$"
#: Goal subjects that are not a pipeline's: ``loom.goals.incoming`` belongs to the goal orchestrator.
RESERVED_PIPELINE_NAMES = frozenset({"incoming"})
#: ``path op literal``: the original's == / != against true, false, null, numbers or strings.
CONDITION_RE = re.compile(
    r"""^\s*(?P<path>[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)+)\s*(?P<op>==|!=)\s*"""
    r"""(?P<value>true|false|null|-?\d+(\.\d+)?|"[^"]*"|'[^']*')\s*$"""
)


class Stage(SpecModel):
    """One step: a task for ``worker_type`` built from the goal and earlier outputs."""

    name: str = Field(pattern=STAGE_NAME_PATTERN, max_length=63, description="Stage name, unique.")
    worker_type: WorkerType = Field(description="Worker type that does this stage.")
    tier: TierName | None = Field(default=None, description="Model tier; the worker's default if unset.")
    input_mapping: dict[str, str] = Field(
        default_factory=dict,
        description="Payload field -> source path: goal.context.<key> or <stage>.output.<field>.",
    )
    depends_on: list[str] | None = Field(
        default=None, max_length=50, description="Explicit dependencies (replace inferred ones)."
    )
    condition: str | None = Field(
        default=None,
        max_length=CONDITION_MAX_CHARS,
        description="Run only if true, e.g. 'extract.output.needs_ocr == true'; a missing path skips.",
    )
    timeout_seconds: float = Field(default=60, gt=0, le=86400, description="Per-attempt time limit.")
    retries: int = Field(default=0, ge=0, le=10, description="Extra attempts after a failure or timeout.")


#: The environment variable a pipeline process reads its Redis/Valkey state-store URL from.
STATE_STORE_URL_ENV = "LOOM_PIPELINE_STATE_STORE"

_STATE_STORE_RULES = [
    cel("self.backend != 'redis' || has(self.urlSecretRef)", "backend redis needs urlSecretRef"),
    cel("self.backend != 'nats' || !has(self.urlSecretRef)", "backend nats takes no urlSecretRef"),
]


class PipelineStateStore(SpecModel):
    """Where a pipeline keeps its goal states: the NATS Key-Value bucket, or Redis/Valkey.

    The Redis URL usually carries a password, so it comes from a Secret: the operator
    sets ``urlEnv`` from ``urlSecretRef``; in local mode the process reads ``urlEnv``
    from its own environment.
    """

    model_config = with_validations(SpecModel.model_config, _STATE_STORE_RULES)

    backend: Literal["nats", "redis"] = Field(
        default="nats", description="nats (the loom-pipeline-state bucket) or redis (Redis or Valkey)."
    )
    url_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding the redis:// or rediss:// URL (backend redis)."
    )
    url_env: str = Field(
        default=STATE_STORE_URL_ENV,
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        max_length=100,
        description="Environment variable holding the URL (set from urlSecretRef on a cluster).",
    )

    @model_validator(mode="after")
    def _secret_matches_backend(self) -> PipelineStateStore:
        if self.backend == "redis" and self.url_secret_ref is None:
            raise ValueError("stateStore backend redis needs urlSecretRef (the Secret key with the URL)")
        if self.backend == "nats" and self.url_secret_ref is not None:
            raise ValueError("stateStore backend nats takes no urlSecretRef")
        return self


_PIPELINE_RULES = [
    cel(
        "self.pipelineStages.all(s, self.pipelineStages.exists_one(t, t.name == s.name))",
        "stage names must be unique",
    ),
    cel(
        "self.pipelineStages.all(s, !has(s.dependsOn) || "
        "s.dependsOn.all(d, self.pipelineStages.exists(t, t.name == d)))",
        "dependsOn must name stages of this pipeline",
    ),
]


class PipelineSpec(SpecModel):
    """A multi-stage workflow over worker types, consuming ``loom.goals.<name>``."""

    model_config = with_validations(SpecModel.model_config, _PIPELINE_RULES)

    name: str | None = Field(
        default=None,
        pattern=STAGE_NAME_PATTERN,
        max_length=63,
        description="Pipeline name (goal subject loom.goals.<name>); defaults to metadata.name.",
    )
    description: str = Field(
        default="", max_length=DESCRIPTION_MAX_CHARS, description="Human-readable description."
    )
    timeout_seconds: float = Field(default=300, gt=0, le=86400, description="Whole-goal time limit.")
    max_concurrent_goals: int = Field(
        default=4, ge=1, le=10000, description="Goals one replica runs at once."
    )
    pipeline_stages: list[Stage] = Field(min_length=1, max_length=50, description="The stages.")
    replicas: int = Field(default=1, ge=0, le=100, description="Orchestrator replicas.")
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="Container requests and limits of the orchestrator."
    )
    state_store: PipelineStateStore | None = Field(
        default=None,
        description="Where goal states live; unset: the --state-store flag or its environment "
        "variable, else the NATS Key-Value bucket.",
    )

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str | None) -> str | None:
        if value in RESERVED_PIPELINE_NAMES:
            raise ValueError(
                f"pipeline name {value!r} is reserved (loom.goals.{value} is the orchestrator's subject)"
            )
        return value

    @model_validator(mode="after")
    def _graph(self) -> PipelineSpec:
        problems = pipeline_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def pipeline_name(self) -> str:
        """The pipeline name; set by the loader for manifests."""
        if not self.name:
            raise ValueError("pipeline has no name (set spec.name or metadata.name)")
        return self.name


def mapping_source_stage(path: str) -> str | None:
    """The stage a mapping/condition path reads from, or None for ``goal.*`` paths."""
    head, _, rest = path.partition(".")
    return head if head != "goal" and rest.startswith("output") else None


def stage_dependencies(spec: PipelineSpec) -> dict[str, set[str]]:
    """Each stage's dependencies: explicit ``depends_on`` or inferred from mappings and condition."""
    deps: dict[str, set[str]] = {}
    for stage in spec.pipeline_stages:
        if stage.depends_on is not None:
            deps[stage.name] = set(stage.depends_on)
            continue
        paths = list(stage.input_mapping.values())
        if stage.condition and (m := CONDITION_RE.match(stage.condition)):
            paths.append(m.group("path"))
        deps[stage.name] = {s for p in paths if (s := mapping_source_stage(p))}
    return deps


def execution_levels(spec: PipelineSpec) -> list[list[str]]:
    """Stages grouped into levels; a level's stages depend only on earlier levels. Raises on cycles."""
    deps = stage_dependencies(spec)
    done: set[str] = set()
    levels: list[list[str]] = []
    order = [s.name for s in spec.pipeline_stages]
    while len(done) < len(order):
        level = [n for n in order if n not in done and deps[n] <= done]
        if not level:
            cyclic = sorted(n for n in order if n not in done)
            raise ValueError(f"dependency cycle among stages: {', '.join(cyclic)}")
        levels.append(level)
        done.update(level)
    return levels


def pipeline_problems(spec: PipelineSpec) -> list[str]:
    """Every problem with the stage graph, as readable strings (empty when valid)."""
    problems: list[str] = []
    names = [s.name for s in spec.pipeline_stages]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"duplicate stage names: {', '.join(dupes)}")
    known = set(names)
    for i, stage in enumerate(spec.pipeline_stages):
        where = f"pipelineStages[{i}] ({stage.name})"
        for d in stage.depends_on or []:
            if d not in known:
                problems.append(f"{where}: dependsOn names unknown stage {d!r}")
            elif d == stage.name:
                problems.append(f"{where}: a stage cannot depend on itself")
        for key, path in stage.input_mapping.items():
            problems += [f"{where}: inputMapping.{key}: {p}" for p in _path_problems(path, known, stage.name)]
        if stage.condition is not None:
            m = CONDITION_RE.match(stage.condition)
            if not m:
                problems.append(
                    f"{where}: condition {stage.condition!r} must be "
                    "'<path> ==|!= <true|false|null|number|'string'>'"
                )
            else:
                problems += [
                    f"{where}: condition: {p}" for p in _path_problems(m.group("path"), known, stage.name)
                ]
    if not problems:
        try:
            execution_levels(spec)
        except ValueError as exc:
            problems.append(str(exc))
    return problems


def _path_problems(path: str, known: set[str], own: str) -> list[str]:
    parts = path.split(".")
    if not path or any(not p for p in parts):
        return [f"malformed path {path!r}"]
    if parts[0] == "goal":
        if len(parts) < 2 or parts[1] not in ("context", "instruction", "goal_id", "tenant"):
            return [
                f"path {path!r} must be goal.context.<key>, goal.instruction, goal.goal_id or goal.tenant"
            ]
        if parts[1] == "context" and len(parts) < 3:
            return [f"path {path!r} must name a context key (goal.context.<key>)"]
        return []
    if len(parts) < 2 or parts[1] != "output":
        return [f"path {path!r} must start with goal. or <stage>.output"]
    if parts[0] not in known:
        return [f"path {path!r} reads unknown stage {parts[0]!r}"]
    if parts[0] == own:
        return [f"path {path!r} reads the stage's own output"]
    return []


def resolve_path(path: str, goal: dict[str, Any], outputs: dict[str, Any]) -> tuple[bool, Any]:
    """Look a mapping path up: (found, value). ``goal`` is the goal message as a dict."""
    parts = path.split(".")
    if parts[0] == "goal":
        node: Any = goal
        rest = parts[1:]
    else:
        if parts[0] not in outputs:
            return False, None
        node = outputs[parts[0]]
        rest = parts[2:]
    for part in rest:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


def evaluate_condition(condition: str, goal: dict[str, Any], outputs: dict[str, Any]) -> bool:
    """Evaluate ``path op literal``; a missing path is False (the stage is skipped)."""
    m = CONDITION_RE.match(condition)
    if not m:
        raise ValueError(f"invalid condition {condition!r}")
    found, value = resolve_path(m.group("path"), goal, outputs)
    if not found:
        return False
    raw = m.group("value")
    literal: Any
    if raw in ("true", "false"):
        literal = raw == "true"
    elif raw == "null":
        literal = None
    elif raw[0] in "\"'":
        literal = raw[1:-1]
    else:
        literal = float(raw) if "." in raw else int(raw)
    equal = value == literal and (isinstance(value, bool) == isinstance(literal, bool))
    return equal if m.group("op") == "==" else not equal
