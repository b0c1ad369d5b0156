"""From loaded manifests to the process plan of local mode (pure: no I/O, no clocks).

The plan mirrors what the operator makes of the same resources: one router
(RouterConfig = the RouterPolicy plus the catalog of Workers), one worker
process per Worker per served tier (with ``LOOM_TIER_CONFIG`` like the rendered
Deployments), one ``loom pipeline`` per Pipeline, one ``loom scheduler`` per
Schedule, and the dynamic orchestrator when a config is given. Every process
gets its own metrics port and a config file to be written into the run dir.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from loom.api.loader import Resource
from loom.api.pipeline import PipelineSpec
from loom.api.router_policy import (
    FALLBACK_TIERS_ENV,
    TIER_CONFIG_ENV,
    RouterConfig,
    RouterPolicySpec,
    TierDefinition,
    WorkerRoute,
    fallback_config,
    worker_route,
    worker_tier,
)
from loom.api.schedule import ScheduleSpec
from loom.api.worker import WorkerSpec
from loom.llm.endpoints import ENDPOINTS_ENV
from loom.settings import LOCAL_MODE_ENV

#: Start order; processes of a later phase start once the earlier phases are ready.
PHASES: dict[str, int] = {
    "nats": 0,
    "llm": 1,
    "router": 2,
    "worker": 3,
    "pipeline": 4,
    "orchestrator": 4,
    "scheduler": 5,
}


class PlanError(Exception):
    """The manifests cannot run together in local mode; every problem is listed."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class PlannedProcess:
    """One ``loom <role>`` process: its arguments, config file, metrics port and environment."""

    name: str
    role: str
    args: tuple[str, ...]
    metrics_port: int
    config_file: str | None = None
    config: dict[str, Any] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    worker_type: str | None = None
    tier: str | None = None

    @property
    def phase(self) -> int:
        """Start phase (see PHASES)."""
        return PHASES[self.role]


@dataclass(frozen=True)
class LocalPlan:
    """Everything ``loom up`` runs for a set of manifests."""

    processes: tuple[PlannedProcess, ...]
    router_config: RouterConfig
    local_llm_tiers: tuple[str, ...]
    warnings: tuple[str, ...] = ()

    def process(self, name: str) -> PlannedProcess:
        """The planned process called ``name``."""
        for p in self.processes:
            if p.name == name:
                return p
        raise KeyError(f"no planned process {name!r}")


def _by_kind(resources: Sequence[Resource], kind: str) -> list[Resource]:
    return [r for r in resources if r.kind == kind]


def router_policy(resources: Sequence[Resource]) -> tuple[str, RouterPolicySpec]:
    """The one RouterPolicy (name, spec), or the default policy when the manifests hold none."""
    policies = _by_kind(resources, "RouterPolicy")
    if len(policies) > 1:
        names = ", ".join(f"{r.name} ({r.source})" for r in policies)
        raise PlanError([f"local mode runs one router, but found {len(policies)} RouterPolicies: {names}"])
    if not policies:
        return "default", RouterPolicySpec()
    spec: RouterPolicySpec = policies[0].spec
    return policies[0].name, spec


def given_policy(resources: Sequence[Resource]) -> RouterPolicySpec | None:
    """The manifests' RouterPolicy, or None when they hold none (every tier is then a local default)."""
    return router_policy(resources)[1] if _by_kind(resources, "RouterPolicy") else None


def local_llm_tiers(resources: Sequence[Resource]) -> list[str]:
    """Tiers needing the shared llama.cpp server: backend local, no base URL, served by an LLM worker."""
    policy = given_policy(resources)
    needed: set[str] = set()
    for res in _by_kind(resources, "Worker"):
        spec: WorkerSpec = res.spec
        if spec.worker_kind != "llm":
            continue
        for tier in spec.served_tiers:
            try:
                tdef = worker_tier(policy, tier)
            except KeyError:
                continue
            # The tier itself, and the fallback tiers a worker on it may call.
            for name, d in [(tier, tdef), *((f.name, f) for f in _fallbacks(policy, tier))]:
                if d.backend == "local" and not d.base_url:
                    needed.add(name)
    return sorted(needed)


def _fallbacks(policy: RouterPolicySpec | None, tier: str) -> list[TierDefinition]:
    return policy.fallback_tiers(tier, mounted_keys=False) if policy is not None else []


def _absolute(path: str | None, base: Path) -> str | None:
    if path is None or Path(path).is_absolute():
        return path
    return str((base / path).resolve())


def worker_manifest(res: Resource) -> dict[str, Any]:
    """The Worker manifest for its config file, with file paths made absolute against the source file.

    A config file in the run dir must still find the knowledge files and workspace
    that the original manifest named relative to itself.
    """
    spec: WorkerSpec = res.spec
    base = Path(res.source).parent if res.source else Path.cwd()
    updates: dict[str, Any] = {}
    for key in ("knowledge_sources", "knowledge_silos"):
        if entries := getattr(spec, key):
            updates[key] = [s.model_copy(update={"path": _absolute(s.path, base)}) for s in entries]
    if spec.workspace_dir:
        updates["workspace_dir"] = _absolute(spec.workspace_dir, base)
    fixed = Resource(
        kind=res.kind,
        name=res.name,
        spec=spec.model_copy(update=updates) if updates else spec,
        namespace=res.namespace,
        source=res.source,
        metadata=res.metadata,
        is_manifest=res.is_manifest,
    )
    return fixed.manifest()


def local_mode_env(policy: RouterPolicySpec, *extra_urls: str) -> dict[str, str]:
    """``LOOM_LOCAL_MODE`` and ``LOOM_MODEL_ENDPOINTS`` for a process ``loom up`` starts.

    ``extra_urls`` (``loom up``'s own embedded model server) join the policy's allow-list.
    """
    endpoints = policy.model_endpoints
    if extra_urls:
        origins = [f"{u.scheme}://{u.netloc}" for u in map(urlsplit, extra_urls)]
        endpoints = endpoints.model_copy(update={"allowed_urls": [*endpoints.allowed_urls, *origins]})
    return {LOCAL_MODE_ENV: "1", ENDPOINTS_ENV: endpoints.env_value()}


def worker_tier_env(
    policy: RouterPolicySpec | None, tier: str, local_llm_url: str | None
) -> tuple[dict[str, str], TierDefinition]:
    """``LOOM_TIER_CONFIG`` (and ``LOOM_LOCAL_LLM_URL``) for a worker on a tier, and the endpoint
    allow-list of local mode: the policy's, plus the embedded model server on loopback."""
    endpoints_of = policy or RouterPolicySpec()
    env: dict[str, str] = local_mode_env(endpoints_of)

    def served_locally(d: TierDefinition) -> TierDefinition:
        """A tier (or a fallback) on the local model without a URL reaches the embedded server."""
        if not (d.backend == "local" and not d.base_url and local_llm_url):
            return d
        env["LOOM_LOCAL_LLM_URL"] = local_llm_url
        env.update(local_mode_env(endpoints_of, local_llm_url))
        return d.model_copy(update={"base_url": local_llm_url})

    tdef = served_locally(worker_tier(policy, tier))
    env[TIER_CONFIG_ENV] = tdef.worker_config()
    if policy is not None and tdef.fallback:
        fallbacks = [served_locally(f) for f in policy.fallback_tiers(tier, mounted_keys=False)]
        env[FALLBACK_TIERS_ENV] = fallback_config(fallbacks)
    return env, tdef


def _unique(resources: Sequence[Resource], kind: str, key: str, problems: list[str]) -> None:
    seen: dict[str, Resource] = {}
    for res in _by_kind(resources, kind):
        ident = getattr(res.spec, key) if kind != "RouterPolicy" else res.name
        if ident in seen:
            problems.append(
                f"{kind} {ident!r} is defined twice ({seen[ident].source} and {res.source}); "
                "local mode runs every namespace on one bus"
            )
        seen[ident] = res


def _config_process(
    res: Resource, role: str, name: str, run_dir: Path, ports: Iterator[int]
) -> PlannedProcess:
    """``loom <role> --config <kind>-<name>.yaml`` for a Pipeline or Schedule; the file gets its manifest."""
    config_file = str(run_dir / f"{res.kind.lower()}-{name}.yaml")
    return PlannedProcess(
        name=f"{role}-{name}",
        role=role,
        args=(role, "--config", config_file),
        metrics_port=next(ports),
        config_file=config_file,
        config=res.manifest(),
    )


def build_plan(
    resources: Sequence[Resource],
    *,
    run_dir: Path,
    ports: Iterator[int],
    local_llm_url: str | None = None,
    orchestrator_config: str | None = None,
    env: Mapping[str, str] | None = None,
) -> LocalPlan:
    """The processes that run these resources locally.

    Config files are named inside ``run_dir`` (absolute paths in the arguments, so the
    processes can run in the user's directory and import its backends); ``ports`` yields
    one metrics port per process; ``local_llm_url`` is the shared
    llama.cpp server for tiers on backend ``local``; ``env`` is the environment the
    processes inherit (checked for API keys the tiers need).
    """
    env = env or {}
    problems: list[str] = []
    warnings: list[str] = []
    policy_name, policy = router_policy(resources)
    workers = _by_kind(resources, "Worker")
    pipelines = _by_kind(resources, "Pipeline")
    schedules = _by_kind(resources, "Schedule")
    _unique(resources, "Worker", "worker_type", problems)
    _unique(resources, "Pipeline", "pipeline_name", problems)
    _unique(resources, "Schedule", "schedule_name", problems)
    if not (workers or pipelines or schedules or orchestrator_config):
        problems.append("nothing to run: no Worker, Pipeline or Schedule in the given manifests")

    router_port = next(ports)
    catalog: dict[str, WorkerRoute] = {}
    processes: list[PlannedProcess] = []
    worker_procs: list[PlannedProcess] = []
    for res in workers:
        spec: WorkerSpec = res.spec
        wtype = spec.worker_type
        catalog[wtype] = worker_route(spec)
        config_file = str(run_dir / f"worker-{wtype}.yaml")
        manifest = worker_manifest(res)
        for tier in spec.served_tiers:
            try:
                tier_env, tdef = worker_tier_env(given_policy(resources), tier, local_llm_url)
            except KeyError:
                problems.append(
                    f"Worker {wtype!r} serves tier {tier!r}, which RouterPolicy {policy_name!r} "
                    f"does not define (defined: {', '.join(policy.tier_names)})"
                )
                continue
            if spec.worker_kind == "llm":
                if tdef.backend == "local" and not tdef.base_url:
                    problems.append(
                        f"tier {tier!r} runs on the local model, but no local model server URL was given"
                    )
                key_env = tdef.key_env
                if key_env and not env.get(key_env):
                    warnings.append(
                        f"Worker {wtype!r} on tier {tier!r} ({tdef.backend}) needs the API key in "
                        f"${key_env}, which is not set; its tasks will fail until it is"
                    )
            worker_procs.append(
                PlannedProcess(
                    name=f"worker-{wtype}-{tier}",
                    role="worker",
                    args=(
                        "worker",
                        "--config",
                        config_file,
                        "--tier",
                        tier,
                        # relative knowledge paths start where the manifest lives, not in the run dir
                        "--base-dir",
                        str(Path(res.source).resolve().parent) if res.source else ".",
                    ),
                    metrics_port=next(ports),
                    config_file=config_file,
                    config=manifest,
                    env=tier_env,
                    worker_type=wtype,
                    tier=tier,
                )
            )

    router_config = RouterConfig(policy=policy, workers=catalog)
    processes.append(
        PlannedProcess(
            name="router",
            role="router",
            args=("router", "--config", str(run_dir / "router.yaml")),
            metrics_port=router_port,
            config_file=str(run_dir / "router.yaml"),
            config=router_config.to_manifest_dict(),
        )
    )
    processes += worker_procs

    pipeline_names = set()
    for res in pipelines:
        pspec: PipelineSpec = res.spec
        pname = pspec.pipeline_name
        pipeline_names.add(pname)
        for stage in pspec.pipeline_stages:
            route = catalog.get(stage.worker_type)
            if route is None:
                warnings.append(
                    f"Pipeline {pname!r} stage {stage.name!r} needs worker type {stage.worker_type!r}, "
                    "which no Worker in these manifests serves"
                )
            elif stage.tier and stage.tier not in route.tiers:
                warnings.append(
                    f"Pipeline {pname!r} stage {stage.name!r} asks for tier {stage.tier!r}, which Worker "
                    f"{stage.worker_type!r} does not serve (serves: {', '.join(route.tiers)})"
                )
        processes.append(_config_process(res, "pipeline", pname, run_dir, ports))

    if orchestrator_config:
        processes.append(
            PlannedProcess(
                name="orchestrator",
                role="orchestrator",
                args=("orchestrator", "--config", str(Path(orchestrator_config).resolve())),
                metrics_port=next(ports),
                env=local_mode_env(policy),
            )
        )

    for res in schedules:
        sspec: ScheduleSpec = res.spec
        sname = sspec.schedule_name
        goal = sspec.goal
        if sspec.dispatch_type == "goal" and goal is not None:
            if goal.pipeline and goal.pipeline not in pipeline_names:
                warnings.append(
                    f"Schedule {sname!r} submits goals to pipeline {goal.pipeline!r}, "
                    "which is not in these manifests"
                )
            if not goal.pipeline and not orchestrator_config:
                warnings.append(
                    f"Schedule {sname!r} submits goals to the orchestrator, which is not configured "
                    "(loom up --orchestrator FILE)"
                )
        processes.append(_config_process(res, "scheduler", sname, run_dir, ports))

    if problems:
        raise PlanError(problems)
    return LocalPlan(
        processes=tuple(processes),
        router_config=router_config,
        local_llm_tiers=tuple(local_llm_tiers(resources)),
        warnings=tuple(warnings),
    )
