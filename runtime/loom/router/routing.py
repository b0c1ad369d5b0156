"""The routing decision, pure: which ``loom.tasks.<worker_type>.<tier>`` a task goes to, or why none.

Tier choice: ``tierOverrides[worker_type]`` > the task's ``model_tier`` > the
worker's ``defaultModelTier`` > the one tier that workers of the type consume (a
router without a catalog learns it from the workers' durable consumers) > ``standard``.
A worker type missing from a configured catalog, or a tier the policy does not
define or the worker does not serve, is a rejection with the dead-letter reason that says so.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from loom.api.loader import LoadError, format_validation_error, infer_kind, load_text, read_files
from loom.api.router_policy import RouterConfig, RouterPolicySpec, WorkerRoute, worker_route
from loom.messages import DeadLetterReason, TaskMessage
from loom.subjects import task_subject

FALLBACK_TIER = "standard"
#: Output tokens assumed for a worker type the catalog does not describe.
DEFAULT_MAX_OUTPUT_TOKENS = 2000
#: Seconds a dispatch holds its concurrency and token estimate when its worker is not in the catalog.
DEFAULT_INFLIGHT_LEASE = 900.0
#: What a worker adds to ``timeout_seconds`` for its ack wait (``loom worker --ack-grace-seconds``).
WORKER_ACK_GRACE = 30.0
#: Slack on top of a worker's longest possible hold, for the result's way back.
LEASE_GRACE = 60.0


@dataclass(frozen=True)
class Route:
    """Send the task to ``subject``."""

    worker_type: str
    tier: str
    subject: str


@dataclass(frozen=True)
class Rejection:
    """The task cannot be routed: dead-letter it with ``reason``."""

    reason: DeadLetterReason
    detail: str


class RoutingTable:
    """A RouterConfig made ready for per-task decisions (subjects precomputed)."""

    def __init__(self, config: RouterConfig):
        self.config = config
        self.policy = config.policy
        self.catalog = config.workers
        self.tiers = frozenset(config.policy.tier_names)
        self._subjects: dict[tuple[str, str], str] = {}

    def needs_served_tiers(self, task: TaskMessage) -> bool:
        """Whether the tier choice depends on which tiers workers of the type consume."""
        return not (
            self.policy.tier_overrides.get(task.worker_type)
            or task.model_tier
            or (self.catalog is not None and task.worker_type in self.catalog)
        )

    def choose_tier(self, task: TaskMessage, served: Collection[str] = ()) -> str:
        """The tier by precedence: override, task, worker default, the only ``served`` tier, ``standard``.

        ``served``: the tiers workers of this type consume (their durable consumers exist).
        """
        override = self.policy.tier_overrides.get(task.worker_type)
        if override:
            return override
        if task.model_tier:
            return task.model_tier
        if self.catalog is not None and task.worker_type in self.catalog:
            return self.catalog[task.worker_type].default_model_tier
        if len(served) == 1:
            return next(iter(served))
        return FALLBACK_TIER

    def route(self, task: TaskMessage, served: Collection[str] = ()) -> Route | Rejection:
        """Decide where a task goes (``served``: see :meth:`choose_tier`)."""
        wt = task.worker_type
        worker: WorkerRoute | None = None
        if self.catalog is not None:
            worker = self.catalog.get(wt)
            if worker is None:
                return Rejection(
                    DeadLetterReason.UNKNOWN_WORKER_TYPE,
                    f"no worker type {wt!r} (known: {', '.join(sorted(self.catalog)) or 'none'})",
                )
        tier = self.choose_tier(task, served)
        if tier not in self.tiers:
            return Rejection(
                DeadLetterReason.UNKNOWN_TIER,
                f"tier {tier!r} is not defined (tiers: {', '.join(sorted(self.tiers))})",
            )
        if worker is not None:
            served = worker.tiers or [worker.default_model_tier]
            if tier not in served:
                return Rejection(
                    DeadLetterReason.UNKNOWN_TIER,
                    f"worker {wt!r} does not serve tier {tier!r} (serves {', '.join(served)})",
                )
        key = (wt, tier)
        subject = self._subjects.get(key)
        if subject is None:
            try:
                subject = self._subjects[key] = task_subject(wt, tier)
            except ValueError as exc:
                return Rejection(DeadLetterReason.MALFORMED, str(exc))
        return Route(wt, tier, subject)

    def inflight_lease(self, worker_type: str) -> float:
        """Seconds a dispatch of this worker type holds capacity unanswered (see :func:`inflight_lease`)."""
        return inflight_lease(self.catalog.get(worker_type) if self.catalog is not None else None)

    def max_output_tokens(self, worker_type: str) -> int:
        """Output tokens to assume for a task of this worker type (for the tokens-per-minute estimate)."""
        if self.catalog is not None and worker_type in self.catalog:
            return self.catalog[worker_type].max_output_tokens
        return DEFAULT_MAX_OUTPUT_TOKENS


def inflight_lease(route: WorkerRoute | None) -> float:
    """How long a dispatch may go unanswered before the router stops holding capacity for it.

    A worker holds a task at most ``timeout + ack grace`` per delivery, ``max_deliver`` times;
    past that the task has a result or a dead letter (which answers the caller too), so a
    dispatch still unanswered then has lost its result.
    """
    if route is None or route.timeout_seconds is None or route.max_deliver is None:
        return DEFAULT_INFLIGHT_LEASE
    return (route.timeout_seconds + WORKER_ACK_GRACE) * route.max_deliver + LEASE_GRACE


def estimate_tokens(payload_size: int, max_output_tokens: int) -> int:
    """Tokens a task may use: ~4 bytes per input token plus the worker's output budget."""
    return payload_size // 4 + max_output_tokens


def load_router_config(paths: list[str | Path]) -> RouterConfig:
    """A RouterConfig from files and directories.

    Either RouterConfig documents (keys ``policy`` and ``workers``, what the operator
    writes to ``router.yaml``) or any mix of RouterPolicy and Worker files/manifests;
    the worker catalog is built from the Workers. Other kinds are ignored. Raises
    LoadError naming every problem.
    """
    problems: list[str] = []
    policies: list[RouterPolicySpec] = []
    configs: list[RouterConfig] = []
    workers: dict[str, WorkerRoute] = {}
    for path, text in read_files(paths, problems):
        try:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as exc:
            problems.append(f"{path}: invalid YAML: {exc}")
            continue
        # plain RouterConfig documents (``policy``/``workers``), by the loader's one kind rule
        if docs and all(isinstance(d, dict) and infer_kind(d) == "RouterConfig" for d in docs):
            for i, doc in enumerate(docs):
                try:
                    configs.append(RouterConfig.model_validate(doc))
                except ValidationError as exc:
                    where = f"{path}[{i}]" if i else str(path)
                    problems += [f"{where}: {line}" for line in format_validation_error(exc, "RouterConfig")]
            continue
        try:
            resources = load_text(text, str(path))
        except LoadError as exc:
            problems += exc.problems
            continue
        for r in resources:
            if r.kind == "RouterPolicy":
                policies.append(r.spec)
            elif r.kind == "Worker":
                workers[r.spec.worker_type] = worker_route(r.spec)
    if len(policies) + len(configs) > 1:
        problems.append(
            f"expected at most one RouterPolicy or RouterConfig, found {len(policies) + len(configs)}"
        )
    if problems:
        raise LoadError(problems)
    if configs:
        config = configs[0]
        if workers:
            config = config.model_copy(update={"workers": {**(config.workers or {}), **workers}})
        return config
    return RouterConfig(policy=policies[0] if policies else RouterPolicySpec(), workers=workers or None)
