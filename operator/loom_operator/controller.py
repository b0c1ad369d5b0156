"""The operator's process-wide state and every path that leads to a reconcile.

Kopf indices (filled from watch streams before any handler runs) give the
namespace's RouterPolicies and Workers and each resource's child Deployments without
API reads. Besides Kopf's create/update/resume handlers, reconciles come from:
a child deleted or edited by hand (debounced re-apply of its owner), a Worker
change (the namespace's router catalog, and Pipelines/Schedules naming worker types), a
Pipeline change (Schedules naming pipelines), a RouterPolicy change (the namespace's
Workers' tier config), and a periodic resync. These loops are plain asyncio tasks,
not Kopf timers: Kopf puts a finalizer on every object that has a timer or daemon,
and these resources need none (children go by ownerReferences).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from loom.api.common import GROUP_VERSION
from loom.api.kinds import KIND_NAMES
from loom_operator import metrics
from loom_operator.conditions import Phase
from loom_operator.dispatch import PipelineEntry, PolicyEntry, Stalled, WorkerEntry, catalog, catalog_hash
from loom_operator.eval_results import run_from_job, run_from_pod
from loom_operator.k8s import Kube, KubeError, namespace_terminating, transient
from loom_operator.readiness import ChildDeployment
from loom_operator.reconcile import Reconciler
from loom_operator.render.common import LABEL_KINDS
from loom_operator.render.worker import deployment_name
from loom_operator.scaler_loop import Target
from loom_operator.settings import Settings

log = logging.getLogger(__name__)

#: Foreign managers whose spec edits to a child are expected and left alone.
OWN_MANAGERS = {"loom-operator", "loom-autoscaler", "kube-controller-manager", "keda-operator", "keda"}


class Controller:
    """Reconcile entry points plus the background resync loop."""

    def __init__(
        self,
        settings: Settings,
        kube: Kube,
        reconciler: Reconciler,
        *,
        children: Mapping[Any, Collection[ChildDeployment]],
        workers: Mapping[Any, Collection[WorkerEntry]],
        policies: Mapping[Any, Collection[PolicyEntry]],
        pipelines: Mapping[Any, Collection[PipelineEntry]],
        active: Callable[[], Awaitable[bool]] | None = None,
    ):
        self.settings = settings
        #: Whether this replica may work (a paused hot standby may not); None = always.
        self._active = active
        self.kube = kube
        self.reconciler = reconciler
        self._children = children
        self._workers = workers
        self._policies = policies
        self._pipelines = pipelines
        #: Per namespace: the worker types and pipeline names last seen (what references resolve to).
        self._worker_types: dict[str, frozenset[str]] = {}
        self._pipeline_names: dict[str, frozenset[str]] = {}
        self._worker_specs: dict[str, str] = {}
        self._pending: dict[tuple[str, str, str], asyncio.Task[None]] = {}
        self._policy_hashes: dict[str, str] = {}
        self._handled_edits: set[tuple[str, str, str]] = set()
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------ index views

    def children(self, kind: str, namespace: str, name: str) -> list[ChildDeployment]:
        return list(self._children.get((namespace, kind, name), ()))

    def workers(self, namespace: str) -> list[WorkerEntry]:
        return list(self._workers.get(namespace, ()))

    def policies(self, namespace: str) -> list[PolicyEntry]:
        return list(self._policies.get(namespace, ()))

    def pipelines(self, namespace: str) -> list[PipelineEntry]:
        return list(self._pipelines.get(namespace, ()))

    # ------------------------------------------------------------ reconciles

    async def reconcile(self, body: Mapping[str, Any]) -> Phase:
        """Reconcile one resource body; metrics by kind and outcome. Raises Stalled / KubeError."""
        kind = body["kind"]
        meta = body["metadata"]
        ns, name = meta["namespace"], meta["name"]
        started = time.perf_counter()
        outcome = "error"
        try:
            phase = await self.reconciler.reconcile(
                body,
                policies=self.policies(ns),
                workers=self.workers(ns),
                pipelines=self.pipelines(ns),
                children=self.children(kind, ns, name),
            )
            outcome = "ok" if phase.state == "ready" else "progressing"
            # Watch events handled while applying may be newer than what the apply returned.
            await self.refresh(kind, ns, name)
            return phase
        except Stalled:
            outcome = "stalled"
            raise
        except KubeError as exc:
            outcome = "retry" if transient(exc) else "error"
            raise
        finally:
            metrics.RECONCILES.labels(kind, outcome).inc()
            metrics.RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - started)

    async def reconcile_ref(self, kind: str, namespace: str, name: str) -> None:
        """Fetch and reconcile a resource by name (it may be gone or going)."""
        body = await self.kube.get(GROUP_VERSION, kind, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            self.reconciler.forget(kind, namespace, name)
            return
        try:
            await self.reconcile(body)
        except Stalled as exc:
            log.info("%s %s/%s is stalled: %s", kind, namespace, name, exc)

    def soon(self, kind: str, namespace: str, name: str, delay: float = 0.5) -> None:
        """Reconcile shortly, coalescing bursts (e.g. 100 Workers created at once → one router render)."""
        key = (kind, namespace, name)
        task = self._pending.get(key)
        if task is not None and not task.done():
            return

        async def later() -> None:
            await asyncio.sleep(delay)
            self._pending.pop(key, None)
            try:
                await self.reconcile_ref(kind, namespace, name)
            except KubeError as exc:
                log.warning(
                    "reconcile of %s %s/%s failed: %s; the resync retries", kind, namespace, name, exc
                )

        self._pending[key] = asyncio.create_task(later())

    async def refresh(self, kind: str, namespace: str, name: str) -> None:
        """Status only, from the children as last seen."""
        try:
            await self.reconciler.refresh(kind, namespace, name, lambda: self.children(kind, namespace, name))
        except (KubeError, Stalled) as exc:
            log.warning("status of %s %s/%s not written: %s", kind, namespace, name, exc)
        if kind in ("Worker", "RouterPolicy"):
            # A Worker or the router may just have turned Ready: suites waiting for it may run.
            for suite in self.reconciler.waiting_suites(namespace):
                self.soon(*suite)

    # ------------------------------------------------------------ event paths

    async def child_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A child Deployment/ConfigMap/Service/ScaledObject/Job changed or went away."""
        kind, owner = _owner_of(body)
        if kind is None or owner is None:
            return
        ns = body["metadata"]["namespace"]
        if event_type == "DELETED" or self._edited_by_hand(body):
            self.soon(kind, ns, owner)
        elif body.get("kind") == "Deployment":
            await self.refresh(kind, ns, owner)
        elif body.get("kind") == "Job" and kind == "EvalSuite":
            run = run_from_job(body)
            if run is not None and self.reconciler.record_eval_run(ns, owner, run, from_pod=False):
                await self.refresh(kind, ns, owner)

    async def eval_pod_event(self, body: Mapping[str, Any]) -> None:
        """An EvalSuite Job's pod changed: once it has finished, its verdict goes to status."""
        kind, owner = _owner_of(body)
        run = run_from_pod(body)
        if kind != "EvalSuite" or owner is None or run is None:
            return
        ns = body["metadata"]["namespace"]
        if self.reconciler.record_eval_run(ns, owner, run, from_pod=True):
            await self.refresh(kind, ns, owner)

    def _edited_by_hand(self, body: Mapping[str, Any]) -> bool:
        """A foreign field manager touched the child's spec/data since we last looked: put ours back."""
        meta = body["metadata"]
        for entry in meta.get("managedFields") or ():
            manager = entry.get("manager", "")
            if manager in OWN_MANAGERS or entry.get("subresource") == "status":
                continue
            fields = entry.get("fieldsV1") or {}
            if not any(k in fields for k in ("f:spec", "f:data")):
                continue
            mark = (meta.get("uid", ""), manager, str(entry.get("time")))
            if mark in self._handled_edits:
                continue
            self._handled_edits.add(mark)
            log.info(
                "%s %s/%s edited by %s: re-applying",
                body.get("kind"),
                meta["namespace"],
                meta["name"],
                manager,
            )
            return True
        return False

    def _recheck(self, namespace: str, kinds: Collection[str]) -> None:
        """Reconcile this namespace's known resources of ``kinds`` (their references changed)."""
        for kind, ns, name in self.reconciler.resources():
            if ns == namespace and kind in kinds:
                self.soon(kind, ns, name)

    def worker_event(self, namespace: str) -> None:
        """A Worker was added, changed or removed: re-check references to worker types and
        re-render the router catalog if it changed."""
        types = frozenset(w.worker_type for w in self.workers(namespace))
        if self._worker_types.get(namespace) != types:
            self._worker_types[namespace] = types
            self._recheck(namespace, ("Pipeline", "Schedule", "EvalSuite"))
        # EvalSuites carry their Worker's spec into their Job: a changed Worker is run again.
        specs = _digest(sorted([w.name, w.spec.to_manifest_dict()] for w in self.workers(namespace)))
        if self._worker_specs.get(namespace, specs) != specs:
            self._recheck(namespace, ("EvalSuite",))
        self._worker_specs[namespace] = specs
        if self.reconciler.catalog_is(namespace, catalog_hash(catalog(self.workers(namespace)))):
            return
        for policy in self.policies(namespace):
            self.soon("RouterPolicy", namespace, policy.name)

    def pipeline_event(self, namespace: str) -> None:
        """A Pipeline was added, renamed or removed: re-check the Schedules that target pipelines."""
        names = frozenset(p.pipeline_name for p in self.pipelines(namespace))
        if self._pipeline_names.get(namespace) != names:
            self._pipeline_names[namespace] = names
            self._recheck(namespace, ("Schedule",))

    def policy_event(self, namespace: str) -> None:
        """A RouterPolicy changed: the namespace's Workers' tier config may have too."""
        digest = _digest(
            [
                [p.name, p.spec.to_manifest_dict() if p.spec else None]
                for p in sorted(self.policies(namespace), key=lambda p: p.name)
            ]
        )
        previous = self._policy_hashes.get(namespace)
        self._policy_hashes[namespace] = digest
        if previous is None or previous == digest:
            return
        for worker in self.workers(namespace):
            self.soon("Worker", namespace, worker.name)

    # ------------------------------------------------------------ scaler

    def scaler_targets(self) -> list[Target]:
        """Every autoscaled tier of every known Worker, with its current replicas."""
        targets = []
        for namespace, entries in list(self._workers.items()):
            for entry in entries:
                if not entry.spec.autoscaling.enabled:
                    continue
                current = {c.tier: c.replicas for c in self.children("Worker", namespace, entry.name)}
                for tier in entry.tiers:
                    targets.append(
                        Target(
                            namespace=namespace,
                            worker=entry.name,
                            worker_type=entry.worker_type,
                            tier=tier,
                            deployment=deployment_name(entry.name, tier),
                            autoscaling=entry.spec.autoscaling,
                            current=current.get(tier),
                        )
                    )
        return targets

    # ------------------------------------------------------------ background

    async def is_active(self) -> bool:
        """False while this replica is a paused hot standby: background passes are skipped."""
        return self._active is None or await self._active()

    async def resync_forever(self, interval: float) -> None:
        """Re-apply everything every ``interval`` seconds: repairs drift no event told us about."""
        while True:
            await asyncio.sleep(interval)
            if await self.is_active():
                await self.resync_once()

    async def resync_once(self, concurrency: int = 8) -> None:
        gate = asyncio.Semaphore(concurrency)
        namespaces: list[str | None] = list(self.settings.watch_namespaces) or [None]

        async def one(body: dict[str, Any]) -> None:
            async with gate:
                try:
                    await self.reconcile(body)
                except Stalled:
                    pass  # already reported as Stalled with an Event
                except KubeError as exc:
                    if not namespace_terminating(exc):
                        log.warning("resync of %s %s failed: %s", body["kind"], body["metadata"]["name"], exc)

        for kind in KIND_NAMES:
            for ns in namespaces:
                try:
                    items = await self.kube.list(GROUP_VERSION, kind, ns)
                except KubeError as exc:
                    log.warning("resync cannot list %s: %s", kind, exc)
                    continue
                await asyncio.gather(*(one(b) for b in items if not b["metadata"].get("deletionTimestamp")))

    async def schedules_forever(self, interval: float = 30.0) -> None:
        """Keep Schedules' lastScheduleTime/nextScheduleTime current as time passes."""
        while True:
            await asyncio.sleep(interval)
            if not await self.is_active():
                continue
            for kind, ns, name in self.reconciler.resources("Schedule"):
                await self.refresh(kind, ns, name)

    def start(self, *coros: Any) -> None:
        self._tasks += [asyncio.create_task(c) for c in coros]

    async def stop(self) -> None:
        tasks = self._tasks + list(self._pending.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._pending.clear()


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _owner_of(body: Mapping[str, Any]) -> tuple[str | None, str | None]:
    labels = body.get("metadata", {}).get("labels") or {}
    for label, kind in LABEL_KINDS.items():
        if label in labels:
            return kind, labels[label]
    return None, None
