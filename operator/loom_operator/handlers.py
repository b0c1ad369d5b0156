"""Kopf glue: registers the handlers on a registry; every decision lives in controller/reconcile.

Kopf configuration (set at startup):
  * handler progress and a digest of the last handled spec live in ``status.kopf``
    (never in annotations, never a second copy of the spec: see diffbase.py), so the
    operator never writes its resources' spec or metadata and a large spec stays writable;
  * no deletion handlers, timers or daemons on the Loom kinds, so Kopf adds no
    finalizer: children go with their owner through ownerReferences;
  * children are watched with a server-side label selector (``managed-by=loom-operator``);
  * Kopf posts only Warning-level events (errors); Stalled events come from k8s.py.
Errors: ``Stalled`` → ``kopf.PermanentError`` (no hot retry loop); conflicts, throttling and
server errors → ``kopf.TemporaryError``; other API rejections (4xx) → permanent.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

import kopf

from loom.api.common import API_GROUP, API_VERSION
from loom.api.kinds import KINDS, kind_info
from loom.settings import NatsSettings
from loom_operator.bus_users import BusUsers
from loom_operator.controller import Controller
from loom_operator.diffbase import DigestDiffBaseStorage
from loom_operator.dispatch import PipelineEntry, PolicyEntry, Stalled, WorkerEntry, parse_body
from loom_operator.k8s import Credentials, Kube, KubeError, namespace_terminating, transient
from loom_operator.peering import Standby, own_identity
from loom_operator.readiness import ChildDeployment
from loom_operator.reconcile import Reconciler
from loom_operator.render import worker_route
from loom_operator.render.common import COMPONENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL
from loom_operator.router_usage import RouterUsage
from loom_operator.scaler_loop import ScalerLoop
from loom_operator.settings import Settings

log = logging.getLogger(__name__)

PLURALS = tuple(k.plural for k in KINDS)
CHILD_LABELS = {MANAGED_BY_LABEL: MANAGED_BY}
CHILD_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
#: (group/version, plural) of every child kind the operator watches.
CHILD_RESOURCES = (
    ("apps/v1", "deployments"),
    ("v1", "configmaps"),
    ("v1", "services"),
    ("keda.sh/v1alpha1", "scaledobjects"),
    ("networking.k8s.io/v1", "networkpolicies"),
    ("batch/v1", "jobs"),
)
#: The pods of EvalSuite Jobs: their termination message is the suite's verdict.
EVAL_POD_LABELS = {MANAGED_BY_LABEL: MANAGED_BY, COMPONENT_LABEL: kind_info("EvalSuite").component}


async def resolve_keda(settings: Settings, kube: Kube) -> bool:
    """KEDA mode: on/off as told; auto = when the ScaledObject CRD is installed."""
    if settings.keda == "auto":
        return await kube.crd_exists("scaledobjects.keda.sh")
    return settings.keda == "on"


def _translate(exc: KubeError) -> kopf.TemporaryError | kopf.PermanentError:
    if namespace_terminating(exc):
        return kopf.PermanentError(f"namespace is being deleted: {exc}")
    if transient(exc):
        return kopf.TemporaryError(str(exc), delay=5)
    if exc.status == 403:
        return kopf.TemporaryError(f"forbidden (check the operator's RBAC): {exc}", delay=30)
    return kopf.PermanentError(str(exc))


def register(registry: kopf.OperatorRegistry, settings: Settings) -> None:
    """Register every handler of the operator on ``registry``."""

    @kopf.on.login(registry=registry, id="login")
    def login(**_: Any) -> kopf.ConnectionInfo:
        creds = Credentials.load(settings.kubeconfig)
        return kopf.ConnectionInfo(
            server=creds.server,
            ca_path=creds.ca_path,
            insecure=creds.insecure,
            certificate_path=creds.cert_path,
            private_key_path=creds.key_path,
            scheme="Bearer" if creds.token else None,
            token=creds.token,
            default_namespace=creds.default_namespace,
        )

    # ---------------------------------------------------------------- indices

    @kopf.index("apps/v1", "deployments", labels=CHILD_LABELS, registry=registry, id="loom_children")
    def loom_children(body: kopf.Body, **_: Any) -> dict[Any, ChildDeployment] | None:
        child = ChildDeployment.from_body(body)
        if child is None:
            return None
        return {(child.namespace, child.owner_kind, child.owner_name): child}

    @kopf.index(API_GROUP, API_VERSION, "workers", registry=registry, id="loom_workers")
    def loom_workers(
        body: kopf.Body, namespace: str | None, name: str, **_: Any
    ) -> dict[str | None, WorkerEntry] | None:
        try:
            spec = parse_body(body).spec
        except Stalled:
            return None
        return {
            namespace: WorkerEntry(
                name=name,
                worker_type=spec.worker_type,
                route=worker_route(spec),
                tiers=tuple(spec.served_tiers),
                spec=spec,
            )
        }

    @kopf.index(API_GROUP, API_VERSION, "routerpolicies", registry=registry, id="loom_policies")
    def loom_policies(
        body: kopf.Body, namespace: str | None, name: str, **_: Any
    ) -> dict[str | None, PolicyEntry]:
        try:
            spec = parse_body(body).spec
        except Stalled:
            spec = None
        return {namespace: PolicyEntry(name=name, spec=spec)}

    @kopf.index(API_GROUP, API_VERSION, "pipelines", registry=registry, id="loom_pipelines")
    def loom_pipelines(
        body: kopf.Body, namespace: str | None, name: str, **_: Any
    ) -> dict[str | None, PipelineEntry] | None:
        try:
            spec = parse_body(body).spec
        except Stalled:
            return None
        return {namespace: PipelineEntry(name=name, pipeline_name=spec.pipeline_name)}

    # ---------------------------------------------------------------- lifecycle

    @kopf.on.startup(registry=registry, id="startup")
    async def startup(settings: kopf.OperatorSettings, memo: Any, **kwargs: Any) -> None:
        # Kopf passes the (still filling) indices to startup handlers; they stay live.
        loom_children: kopf.Index[Any, ChildDeployment] = kwargs["loom_children"]
        loom_workers: kopf.Index[str, WorkerEntry] = kwargs["loom_workers"]
        loom_policies: kopf.Index[str, PolicyEntry] = kwargs["loom_policies"]
        loom_pipelines: kopf.Index[str, PipelineEntry] = kwargs["loom_pipelines"]
        cfg: Settings = memo["settings"]
        settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
        settings.persistence.diffbase_storage = DigestDiffBaseStorage()
        if not cfg.clusterwide:
            # Watching listed namespaces needs no cluster-wide namespace list (namespaced RBAC forbids it).
            settings.scanning.disabled = True
        if cfg.peering:
            settings.peering.mandatory = True
            if cfg.peering_lifetime:
                settings.peering.lifetime = cfg.peering_lifetime
        settings.posting.level = logging.WARNING
        settings.posting.reporting_component = "loom-operator"
        for group_version, plural in CHILD_RESOURCES:
            settings.watching.label_selectors[group_version, plural] = CHILD_SELECTOR
        # Only eval Jobs' pods, selected by the server: the operator never streams other pods.
        settings.watching.label_selectors["v1", "pods"] = ",".join(
            f"{k}={v}" for k, v in EVAL_POD_LABELS.items()
        )
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.networking.request_timeout = 60

        kube = Kube(Credentials.load(cfg.kubeconfig))
        keda = await resolve_keda(cfg, kube)
        reconciler = Reconciler(kube, cfg, keda=keda)
        # Kopf pauses only its own handlers on a standby; the operator's loops ask the peering.
        standby = (
            Standby(kube, cfg.peering, memo["identity"], settings.peering.priority, cfg.watch_namespaces)
            if cfg.peering
            else None
        )
        controller = Controller(
            cfg,
            kube,
            reconciler,
            children=loom_children,
            workers=loom_workers,
            policies=loom_policies,
            pipelines=loom_pipelines,
            active=standby.active if standby else None,
        )
        memo["kube"] = kube
        memo["controller"] = controller
        controller.start(controller.resync_forever(cfg.resync_seconds), controller.schedules_forever())
        bus_users = BusUsers(kube, cfg)
        if bus_users.enabled:
            memo["bus_users"] = bus_users
            controller.start(bus_users.run_forever(cfg.resync_seconds, active=controller.is_active))
        if not keda:
            scaler = ScalerLoop(
                kube,
                reconciler,
                cfg.nats_monitor_url,
                controller.scaler_targets,
                interval=cfg.scaler_interval,
                on_observed=lambda ns, name: controller.refresh("Worker", ns, name),
                active=controller.is_active,
                account=cfg.nats_account,
            )
            memo["scaler"] = scaler
            controller.start(scaler.run_forever())
        if cfg.usage_interval > 0:
            usage = RouterUsage(
                kube,
                loom_policies,
                NatsSettings.from_env(name="loom-operator"),
                interval=cfg.usage_interval,
                active=controller.is_active,
            )
            memo["router_usage"] = usage
            controller.start(usage.run_forever())
        log.info(
            "loom operator started: %s, KEDA %s, NATS monitor %s",
            "cluster-wide" if cfg.clusterwide else f"namespaces {', '.join(cfg.watch_namespaces)}",
            "on" if keda else "off (built-in scaler)",
            cfg.nats_monitor_url,
        )

    @kopf.on.cleanup(registry=registry, id="cleanup")
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        controller: Controller | None = memo.get("controller")
        if controller is not None:
            await controller.stop()
        for key in ("scaler", "router_usage", "kube"):
            closable: ScalerLoop | RouterUsage | Kube | None = memo.get(key)
            if closable is not None:
                await closable.aclose()

    # ---------------------------------------------------------------- owners

    for plural in PLURALS:

        @kopf.on.resume(API_GROUP, API_VERSION, plural, registry=registry, id="reconcile")
        @kopf.on.create(API_GROUP, API_VERSION, plural, registry=registry, id="reconcile")
        @kopf.on.update(API_GROUP, API_VERSION, plural, registry=registry, id="reconcile")
        async def reconcile(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
            controller: Controller = memo["controller"]
            try:
                await controller.reconcile(body)
            except Stalled as exc:
                raise kopf.PermanentError(str(exc)) from None
            except KubeError as exc:
                raise _translate(exc) from None

        @kopf.on.event(API_GROUP, API_VERSION, plural, registry=registry, id="bus-users")
        async def bus_users_changed(memo: Any, **_: Any) -> None:
            bus_users: BusUsers | None = memo.get("bus_users")
            if bus_users is not None:
                bus_users.changed()

    # A Worker, Pipeline or RouterPolicy changed: Kopf passes the kind's Controller method as ``param``.
    for plural, handler_id, event in (
        ("workers", "worker-catalog", Controller.worker_event),
        ("pipelines", "pipeline-names", Controller.pipeline_event),
        ("routerpolicies", "policy-tiers", Controller.policy_event),
    ):

        @kopf.on.event(API_GROUP, API_VERSION, plural, registry=registry, id=handler_id, param=event)
        async def namespace_changed(namespace: str | None, memo: Any, param: Any = None, **_: Any) -> None:
            controller: Controller | None = memo.get("controller")
            if controller is not None and namespace:
                param(controller, namespace)

    # ---------------------------------------------------------------- children

    for group_version, child in CHILD_RESOURCES:

        @kopf.on.event(group_version, child, labels=CHILD_LABELS, registry=registry, id=f"child-{child}")
        async def child_changed(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
            controller: Controller | None = memo.get("controller")
            if controller is not None:
                await controller.child_event(type, body)

    @kopf.on.event("v1", "pods", labels=EVAL_POD_LABELS, registry=registry, id="eval-pods")
    async def eval_pod_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        controller: Controller | None = memo.get("controller")
        if controller is not None:
            await controller.eval_pod_event(body)


def build_registry(settings: Settings) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    register(registry, settings)
    return registry


async def run(
    settings: Settings, *, stop: asyncio.Event | None = None, ready: asyncio.Event | None = None
) -> None:
    """Run the operator until ``stop`` is set (or forever)."""
    memo = kopf.Memo()
    memo["settings"] = settings
    memo["identity"] = own_identity()
    await kopf.operator(
        registry=build_registry(settings),
        clusterwide=settings.clusterwide,
        namespaces=list(settings.watch_namespaces),
        standalone=settings.peering is None,
        peering_name=settings.peering,
        identity=memo["identity"],
        # Replicas of a hot standby need distinct priorities, or Kopf pauses them all.
        priority=secrets.randbelow(1_000_000) + 1 if settings.peering else None,
        memo=memo,
        stop_flag=stop,
        ready_flag=ready,
    )
