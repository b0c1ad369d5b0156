"""The custom-resource kinds, in one registry: the loader, the reference docs, the CRD generator,
the operator (watches, API paths, labels, status, bus roles) and the name rule all read it.

Adding a kind means its spec and status models, its render function in the operator, and one
:class:`KindInfo` entry here (see ``docs/developing.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from loom.api.common import API_GROUP, API_VERSION, TIER_MAX_LENGTH, SpecModel
from loom.api.eval_suite import EvalSuiteSpec
from loom.api.pipeline import PipelineSpec
from loom.api.router_policy import RouterPolicySpec
from loom.api.schedule import ScheduleSpec
from loom.api.status import (
    CommonStatus,
    EvalSuiteStatus,
    PipelineStatus,
    RouterPolicyStatus,
    ScheduleStatus,
    WorkerStatus,
)
from loom.api.worker import WorkerSpec

KindName = Literal["Worker", "Pipeline", "RouterPolicy", "Schedule", "EvalSuite"]


@dataclass(frozen=True)
class KindInfo:
    """One kind: its names, models, what its pods are, and how ``kubectl get`` shows it."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    spec_model: type[SpecModel]
    status_model: type[CommonStatus]
    #: The ``app.kubernetes.io/component`` of its pods, the suffix of its Deployment, its bus role.
    component: str
    #: Suffixes the operator appends to the resource's name for its children (``-<tier>`` at its longest).
    child_suffixes: tuple[str, ...]
    #: ``kubectl get`` columns besides Ready and Age.
    columns: tuple[dict[str, Any], ...]
    description: str
    #: What ``metadata.name`` becomes (for the name rule's message).
    name_use: str
    #: Whether the spec carries a ``name`` defaulted from ``metadata.name``.
    named: bool = True

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def label(self) -> str:
        """The ``loom.dev/<kind>`` label its children carry (value: the resource's name)."""
        return f"{API_GROUP}/{self.singular}"

    @property
    def api_version(self) -> str:
        return f"{API_GROUP}/{API_VERSION}"


def _column(name: str, type_: str, json_path: str, description: str) -> dict[str, Any]:
    """A ``kubectl get`` column (``additionalPrinterColumns`` entry)."""
    return {"name": name, "type": type_, "jsonPath": json_path, "description": description}


#: A tier name at its longest, for the child-name budget.
_LONGEST_TIER = "-" + "t" * TIER_MAX_LENGTH
#: Hex digits of the spec hash in an EvalSuite's Job name (``<name>-eval-<hash>``).
EVAL_JOB_HASH_LENGTH = 10

KINDS: tuple[KindInfo, ...] = (
    KindInfo(
        kind="Worker",
        plural="workers",
        short_names=("lw",),
        spec_model=WorkerSpec,
        status_model=WorkerStatus,
        component="worker",
        child_suffixes=("-config", "-metrics", _LONGEST_TIER),
        columns=(
            _column("Tiers", "string", ".status.tierNames", "Served tiers."),
            _column("Replicas", "string", ".status.replicaSummary", "Ready/desired replicas over all tiers."),
            _column("Lag", "integer", ".status.lag", "Consumer lag."),
        ),
        description=(
            "A narrowly scoped, stateless LLM or processor worker type; one Deployment per model tier."
        ),
        name_use=(
            "the tier Deployments <name>-<tier>, the Service <name>-metrics and the ConfigMap <name>-config"
        ),
    ),
    KindInfo(
        kind="Pipeline",
        plural="pipelines",
        short_names=("lp",),
        spec_model=PipelineSpec,
        status_model=PipelineStatus,
        component="pipeline",
        child_suffixes=("-config", "-pipeline"),
        columns=(_column("Stages", "integer", ".status.stages", "Stage count."),),
        description="A multi-stage workflow over worker types, run by a pipeline orchestrator Deployment.",
        name_use="the Deployment <name>-pipeline and the ConfigMap <name>-config",
    ),
    KindInfo(
        kind="RouterPolicy",
        plural="routerpolicies",
        short_names=("lrp",),
        spec_model=RouterPolicySpec,
        status_model=RouterPolicyStatus,
        component="router",
        child_suffixes=("-config", "-router"),
        columns=(_column("Tiers", "string", ".status.tierNames", "Defined tiers."),),
        description="Model tiers, tier overrides and rate limits for the router of a namespace.",
        name_use="the Deployment <name>-router and the ConfigMap <name>-config",
        named=False,
    ),
    KindInfo(
        kind="Schedule",
        plural="schedules",
        short_names=("lsc",),
        spec_model=ScheduleSpec,
        status_model=ScheduleStatus,
        component="scheduler",
        child_suffixes=("-config", "-scheduler"),
        columns=(
            _column("Schedule", "string", ".status.schedule", "Cron or interval."),
            _column("Last", "date", ".status.lastScheduleTime", "Last fire."),
            # A string, not a date: kubectl shows dates as an age, and a future time as <invalid>.
            _column("Next", "string", ".status.nextScheduleTime", "Next fire (RFC 3339, UTC)."),
        ),
        description="Cron or fixed-interval dispatch of a goal or a task.",
        name_use="the Deployment <name>-scheduler and the ConfigMap <name>-config",
    ),
    KindInfo(
        kind="EvalSuite",
        plural="evalsuites",
        short_names=("les",),
        spec_model=EvalSuiteSpec,
        status_model=EvalSuiteStatus,
        component="eval",
        child_suffixes=("-eval-config", "-eval-nats", "-eval-" + "0" * EVAL_JOB_HASH_LENGTH),
        columns=(
            _column("Worker", "string", ".spec.worker", "Worker type under test."),
            _column("Score", "number", ".status.lastRun.score", "Aggregate score of the last run."),
            _column(
                "Passed", "boolean", ".status.lastRun.passed", "Whether the last run passed its threshold."
            ),
        ),
        description=(
            "Eval cases and scorers for a worker type, run by the operator as a Job through the "
            "namespace's router on each change; the result gates Argo CD (Degraded when it fails)."
        ),
        name_use="the Job <name>-eval-<hash> and the ConfigMap <name>-eval-config",
    ),
)
BY_KIND: dict[str, KindInfo] = {k.kind: k for k in KINDS}
KIND_NAMES: tuple[str, ...] = tuple(BY_KIND)

if set(get_args(KindName)) != set(BY_KIND):  # pragma: no cover - a registry edit without the Literal
    raise RuntimeError(f"KindName {get_args(KindName)} does not list the registry's kinds {KIND_NAMES}")


def kind_info(kind: str) -> KindInfo:
    """The registry entry of ``kind``; KeyError names the known kinds."""
    try:
        return BY_KIND[kind]
    except KeyError:
        raise KeyError(f"unknown kind {kind!r} (known: {', '.join(KIND_NAMES)})") from None
