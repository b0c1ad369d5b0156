"""Reconcile one resource: parse → render → server-side apply → prune → status.

Kept apart from Kopf so the same code serves the create/update/resume handlers,
the resync timer, the "a child was deleted by hand" path and the "the namespace's
RouterPolicy or Worker catalog changed" path. Invalid specs the API server could
not reject (a pipeline cycle, a tier the RouterPolicy does not define) raise
``Stalled`` after writing a Stalled condition and a Warning Event; nothing is
applied or deleted for them, so a bad edit never churns running children.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from loom.api import GROUP_VERSION, RouterPolicySpec
from loom.api.eval_suite import EvalSuiteSpec
from loom.api.loader import Resource
from loom.api.status import EvalRun
from loom_operator import conditions
from loom_operator.adoption import adoption_problem
from loom_operator.conditions import Phase
from loom_operator.dispatch import (
    PipelineEntry,
    PolicyEntry,
    Stalled,
    WorkerEntry,
    catalog,
    catalog_hash,
    effective_policy,
    parse_body,
    render_resource,
)
from loom_operator.eval_results import WAITING, eval_phase, job_waits_for
from loom_operator.k8s import Kube, KubeError, refused
from loom_operator.kind_status import Observation, StatusView, kind_fields
from loom_operator.readiness import ChildDeployment, freshest, phase_of
from loom_operator.render import Owner
from loom_operator.render.common import child_selector
from loom_operator.settings import Settings

log = logging.getLogger(__name__)

Key = tuple[str, str, str]  # (kind, namespace, name)


class RefusedWrite(Exception):
    """The API server refused to store a child as rendered (e.g. a ConfigMap over 1 MiB)."""


#: Kinds the operator never reads (Secrets: tiers' API keys live there). Writing over one it does
#: not manage is refused by the chart's admission policy (rbac.restrictWrites) instead.
UNREAD_KINDS = frozenset({"Secret"})


class NotOurs(Exception):
    """An object of a child's name exists and does not belong to the resource (never adopted)."""


@dataclass
class Known:
    """What this process last concluded and wrote for one resource (for status-only refreshes)."""

    api_version: str
    kind: str
    namespace: str
    name: str
    generation: int | None
    resource: Resource | None
    created: datetime
    expected: tuple[str, ...] = ()
    #: Child Deployments as the last apply returned them (merged with watch events by freshness).
    applied: dict[str, ChildDeployment] = field(default_factory=dict)
    stalled: Phase | None = None
    status: dict[str, Any] = field(default_factory=dict)
    #: The last status write the server refused (reported once by an Event).
    refused: str | None = None
    #: EvalSuite: the Job that runs the current spec.
    job: str | None = None
    #: EvalSuite: what its Job waits for before it is created (eval_results.job_waits_for).
    waiting: str | None = None
    #: The phase last published (what other resources' readiness checks read).
    phase: Phase | None = None

    def ref(self) -> dict[str, Any]:
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "metadata": {"name": self.name, "namespace": self.namespace},
        }


def _keep(store: dict[Any, Any], key: Any, value: Any) -> bool:
    """Store ``value`` under ``key``; True when that changed what was stored."""
    if store.get(key) == value:
        return False
    store[key] = value
    return True


def _created(body: Mapping[str, Any], now: datetime) -> datetime:
    stamp = body.get("metadata", {}).get("creationTimestamp")
    if not stamp:
        return now
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))


class Reconciler:
    """Renders and applies children, prunes stale ones and writes kstatus status."""

    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        *,
        keda: bool,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.kube = kube
        self.settings = settings
        self.keda = keda
        self.clock = clock
        self._known: dict[Key, Known] = {}
        self._observations: dict[tuple[str, str, str], Observation] = {}
        #: Per namespace: hash and size of the worker catalog the router was last rendered with.
        self._catalogs: dict[str, str] = {}
        self._catalog_sizes: dict[str, int] = {}
        #: Status of one resource is computed and written under its lock, so the last write
        #: is computed from the newest view (watch events and reconciles run concurrently).
        self._locks: dict[Key, asyncio.Lock] = {}
        #: EvalSuite results per (namespace, name, job): from the Job's pod, and from the Job itself
        #: (a failed Job whose pod never finished); the pod's verdict wins.
        self._pod_runs: dict[tuple[str, str, str], EvalRun] = {}
        self._job_runs: dict[tuple[str, str, str], EvalRun] = {}

    # ----------------------------------------------------------------- reconcile

    async def reconcile(
        self,
        body: Mapping[str, Any],
        *,
        policies: Sequence[PolicyEntry] = (),
        workers: Sequence[WorkerEntry] = (),
        pipelines: Sequence[PipelineEntry] = (),
        children: Sequence[ChildDeployment] = (),
    ) -> Phase:
        """Bring one resource's children in line with its spec and report status.

        ``policies``/``workers``/``pipelines`` are the namespace's RouterPolicies, Workers and
        Pipelines, ``children``
        the Deployments already known to belong to this resource (for pruning and readiness).
        """
        owner = Owner.from_body(body)
        assert owner.namespace is not None
        meta = body["metadata"]
        now = self.clock()
        key = (owner.kind, owner.namespace, owner.name)
        known = self._known.get(key) or Known(
            api_version=body.get("apiVersion", GROUP_VERSION),
            kind=owner.kind,
            namespace=owner.namespace,
            name=owner.name,
            generation=meta.get("generation"),
            resource=None,
            created=_created(body, now),
            status={k: v for k, v in (body.get("status") or {}).items() if k != "kopf"},
        )
        known.generation = meta.get("generation")
        self._known[key] = known
        try:
            resource = parse_body(body)
            known.resource = resource
            objects = render_resource(
                owner,
                resource,
                self.settings,
                keda=self.keda,
                policies=policies,
                workers=workers,
                pipelines=pipelines,
            )
        except Stalled as exc:
            await self._stall(known, exc, children, body)
            raise
        known.stalled = None
        if isinstance(resource.spec, RouterPolicySpec):
            routes = catalog(workers)
            digest = catalog_hash(routes)
            if self._catalogs.get(owner.namespace) != digest:
                known.phase = None  # not serving the new catalog until its router has rolled
            self._catalogs[owner.namespace] = digest
            self._catalog_sizes[owner.namespace] = len(routes)

        expected = tuple(o["metadata"]["name"] for o in objects if o["kind"] == "Deployment")
        known.expected = expected  # before applying: watch events may be handled meanwhile
        known.job = next((o["metadata"]["name"] for o in objects if o["kind"] == "Job"), None)
        known.waiting = None
        if known.job is not None and isinstance(resource.spec, EvalSuiteSpec):
            known.waiting = await self._job_waits_for(owner, resource.spec, known.job, policies, workers)
            if known.waiting is not None:
                objects = [o for o in objects if o["kind"] != "Job"]
                known.job = None
        try:
            await self._refuse_adoption(owner, objects)
            applied = await self._apply_all(objects)
        except (NotOurs, RefusedWrite) as exc:
            stalled = Stalled("AdoptionRefused" if isinstance(exc, NotOurs) else "WriteRefused", str(exc))
            await self._stall(known, stalled, children, body)
            raise stalled from None
        known.applied = {
            c.name: c
            for o in applied
            if o.get("kind") == "Deployment" and (c := ChildDeployment.from_body(o)) is not None
        }
        await self._prune(owner, objects, children)
        merged = freshest(children, known.applied.values())
        phase = self._phase(known, [merged[n] for n in expected if n in merged])
        async with self._lock(key):
            await self._publish(known, phase, children=merged.values(), body=body)
        return phase

    async def _stall(
        self, known: Known, exc: Stalled, children: Sequence[ChildDeployment], body: Mapping[str, Any]
    ) -> None:
        """Keep the resource Stalled for ``exc`` and publish that (status and a Warning Event)."""
        known.stalled = Phase.stalled(exc.reason, exc.message)
        async with self._lock((known.kind, known.namespace, known.name)):
            await self._publish(known, known.stalled, children=children, body=body)

    async def _job_waits_for(
        self,
        owner: Owner,
        spec: EvalSuiteSpec,
        job: str,
        policies: Sequence[PolicyEntry],
        workers: Sequence[WorkerEntry],
    ) -> str | None:
        """What the EvalSuite's Job of this spec waits for; None once it exists (never held back)."""
        assert owner.namespace is not None
        if await self.kube.get("batch/v1", "Job", owner.namespace, job) is not None:
            return None
        policy = effective_policy(policies)
        return job_waits_for(
            spec.worker,
            {
                w.name: self.is_ready("Worker", owner.namespace, w.name)
                for w in workers
                if w.worker_type == spec.worker
            },
            policy.name if policy else None,
            policy is not None
            and self.is_ready("RouterPolicy", owner.namespace, policy.name)
            and self.catalog_is(owner.namespace, catalog_hash(catalog(workers))),
        )

    def is_ready(self, kind: str, namespace: str, name: str) -> bool:
        """Whether this process last reported the resource Ready."""
        known = self._known.get((kind, namespace, name))
        return known is not None and known.phase is not None and known.phase.state == "ready"

    def waiting_suites(self, namespace: str) -> list[Key]:
        """EvalSuites of the namespace whose Job waits for a Worker or the router to be Ready."""
        return [k for k, known in self._known.items() if k[1] == namespace and known.waiting is not None]

    async def _refuse_adoption(self, owner: Owner, objects: list[dict[str, Any]]) -> None:
        """Raise NotOurs when an object of a child's name exists and is not this resource's.

        Checked for every child before any is applied, so a refused resource changes nothing.
        """

        async def problem(obj: dict[str, Any]) -> str | None:
            if obj["kind"] in UNREAD_KINDS:
                return None
            meta = obj["metadata"]
            existing = await self.kube.get(
                obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"]
            )
            return None if existing is None else adoption_problem({**existing, "kind": obj["kind"]}, owner)

        problems = [p for p in await asyncio.gather(*(problem(o) for o in objects)) if p]
        if problems:
            raise NotOurs("; ".join(problems))

    async def _apply_all(self, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Apply every child; a child the server refuses raises RefusedWrite naming it."""
        # ConfigMaps and Secrets first: pods of a new Deployment should find their config and identity.
        first = [o for o in objects if o["kind"] in ("ConfigMap", "Secret")]
        rest = [o for o in objects if o["kind"] not in ("ConfigMap", "Secret")]
        applied = [await self._apply(o) for o in first]
        applied += await asyncio.gather(*(self._apply(o) for o in rest))
        return applied

    async def _apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self.kube.apply(obj)
        except KubeError as exc:
            if refused(exc):
                raise RefusedWrite(
                    f"the API server refused {obj['kind']} {obj['metadata']['name']!r}: {exc}"
                ) from exc
            raise

    async def _prune(
        self, owner: Owner, objects: list[dict[str, Any]], children: Sequence[ChildDeployment]
    ) -> None:
        """Delete children this resource no longer renders (a removed tier, autoscaling turned off)."""
        wanted = {(o["kind"], o["metadata"]["name"]) for o in objects}
        for child in children:
            if ("Deployment", child.name) not in wanted:
                log.info("deleting stale Deployment %s/%s", child.namespace, child.name)
                await self.kube.delete("apps/v1", "Deployment", child.namespace, child.name, uid=child.uid)
        if owner.kind == "EvalSuite":
            await self._prune_jobs(owner, wanted)
        if owner.kind != "Worker":
            return
        assert owner.namespace is not None
        # NetworkPolicies always: turning them off (or removing a tier) must remove them.
        kinds = [("networking.k8s.io/v1", "NetworkPolicy")]
        if self.keda:
            kinds.append(("keda.sh/v1alpha1", "ScaledObject"))
        for api_version, kind in kinds:
            for obj in await self.kube.list(api_version, kind, owner.namespace, child_selector(owner)):
                name = obj["metadata"]["name"]
                if (kind, name) not in wanted:
                    log.info("deleting stale %s %s/%s", kind, owner.namespace, name)
                    await self.kube.delete(
                        api_version, kind, owner.namespace, name, uid=obj["metadata"].get("uid")
                    )

    async def _prune_jobs(self, owner: Owner, wanted: set[tuple[str, str]]) -> None:
        """Delete an EvalSuite's Jobs of earlier specs (their pods go with them)."""
        assert owner.namespace is not None
        for obj in await self.kube.list("batch/v1", "Job", owner.namespace, child_selector(owner)):
            name = obj["metadata"]["name"]
            if ("Job", name) not in wanted:
                log.info("deleting Job %s/%s of an earlier spec", owner.namespace, name)
                await self.kube.delete(
                    "batch/v1", "Job", owner.namespace, name, uid=obj["metadata"].get("uid")
                )
                for runs in (self._pod_runs, self._job_runs):
                    runs.pop((owner.namespace, owner.name, name), None)

    # ----------------------------------------------------------------- status

    def _lock(self, key: Key) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def refresh(
        self, kind: str, namespace: str, name: str, children: Callable[[], Sequence[ChildDeployment]]
    ) -> None:
        """Recompute status from the children as last seen (no apply). Unknown resources are skipped:
        their own handler has not run in this process yet and will report."""
        known = self._known.get((kind, namespace, name))
        if known is None or known.resource is None:
            return
        async with self._lock((kind, namespace, name)):
            merged = freshest(known.applied.values(), children())
            current = (
                list(merged.values()) if known.stalled else [merged[n] for n in known.expected if n in merged]
            )
            phase = known.stalled or self._phase(known, current)
            await self._publish(known, phase, children=current)

    def _phase(self, known: Known, current: Sequence[ChildDeployment]) -> Phase:
        """Readiness: an EvalSuite's from its Job's verdict, any other kind's from its Deployments."""
        if known.waiting is not None:
            return Phase.progressing(WAITING, known.waiting)
        if known.job is not None:
            return eval_phase(known.job, self.eval_run(known.namespace, known.name, known.job))
        return phase_of(known.expected, current)

    def resources(self, kind: str | None = None) -> list[Key]:
        """The resources this process has reconciled (of one kind, or all)."""
        return [k for k in self._known if kind is None or k[0] == kind]

    def observation(self, namespace: str, worker: str, tier: str) -> Observation | None:
        return self._observations.get((namespace, worker, tier))

    def observe(self, namespace: str, worker: str, tier: str, observation: Observation) -> bool:
        """Keep what the built-in scaler saw for one tier; True when it changed (status needs a refresh)."""
        return _keep(self._observations, (namespace, worker, tier), observation)

    def catalog_is(self, namespace: str, digest: str) -> bool:
        """Whether the namespace's router was last rendered with the worker catalog of this digest."""
        return self._catalogs.get(namespace) == digest

    def eval_run(self, namespace: str, name: str, job: str) -> EvalRun | None:
        key = (namespace, name, job)
        return self._pod_runs.get(key) or self._job_runs.get(key)

    def record_eval_run(self, namespace: str, name: str, run: EvalRun, *, from_pod: bool) -> bool:
        """Keep a Job's verdict; True when it is new (status needs a refresh)."""
        return _keep(self._pod_runs if from_pod else self._job_runs, (namespace, name, run.job_name), run)

    def forget(self, kind: str, namespace: str, name: str) -> None:
        self._known.pop((kind, namespace, name), None)
        self._locks.pop((kind, namespace, name), None)
        for key in [k for k in self._observations if k[0] == namespace and k[1] == name and kind == "Worker"]:
            del self._observations[key]
        if kind == "EvalSuite":
            for runs in (self._pod_runs, self._job_runs):
                for key in [k for k in runs if k[:2] == (namespace, name)]:
                    del runs[key]

    def build_status(
        self, known: Known, phase: Phase, children: Iterable[ChildDeployment] = ()
    ) -> dict[str, Any]:
        """The full status document (every list written whole)."""
        now = self.clock()
        status: dict[str, Any] = {
            "observedGeneration": known.generation,
            "conditions": conditions.build_conditions(
                phase, known.generation, known.status.get("conditions"), now
            ),
        }
        if known.resource is None:
            return status
        # Stalled: nothing was pruned, so every child still running is counted.
        view = StatusView(
            now=now,
            created=known.created,
            children={c.tier: c for c in children if c.name in known.expected or phase.state == "stalled"},
            observations={
                tier: obs
                for (ns, name, tier), obs in self._observations.items()
                if (ns, name) == (known.namespace, known.name)
            },
            catalog_size=self._catalog_sizes.get(known.namespace, 0),
            job=known.job,
            eval_run=self.eval_run(known.namespace, known.name, known.job) if known.job else None,
            previous=known.status,
        )
        status.update(kind_fields(known.kind, known.resource.spec, view))
        return status

    async def _publish(
        self,
        known: Known,
        phase: Phase,
        *,
        children: Iterable[ChildDeployment] = (),
        body: Mapping[str, Any] | None = None,
    ) -> None:
        """Write status when it changed; post a Warning Event when the resource newly stalls."""
        known.phase = phase
        status = self.build_status(known, phase, children)
        previous = known.status
        unchanged = {k: v for k, v in status.items() if k != "conditions"} == {
            k: previous.get(k) for k in status if k != "conditions"
        } and conditions.same_ignoring_times(status["conditions"], previous.get("conditions"))
        if phase.state == "stalled":
            old = conditions.condition(previous.get("conditions"), conditions.STALLED)
            if not (old and old.get("status") == "True" and old.get("message") == phase.message):
                await self._warn(known, phase.reason, phase.message, body)
        if unchanged:
            return
        try:
            result = await self.kube.patch_status(
                known.api_version, known.kind, known.namespace, known.name, status
            )
        except KubeError as exc:
            if not refused(exc):
                raise
            # The status cannot say so itself: an Event is all that can report it.
            message = f"the API server refused the status update: {exc}"
            log.warning("%s %s/%s: %s", known.kind, known.namespace, known.name, message)
            if known.refused != message:
                known.refused = message
                await self._warn(known, "StatusRefused", message, body)
            raise Stalled("StatusRefused", message) from None
        known.refused = None
        if result is not None:
            known.status = status

    async def _warn(self, known: Known, reason: str, message: str, body: Mapping[str, Any] | None) -> None:
        try:
            await self.kube.post_event(
                {**known.ref(), "metadata": dict((body or {}).get("metadata") or known.ref()["metadata"])},
                "Warning",
                reason,
                message,
            )
        except KubeError as exc:
            log.warning("cannot post event for %s/%s: %s", known.namespace, known.name, exc)
