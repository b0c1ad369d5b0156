"""The built-in scaler's adapter: lag from NATS monitoring in, scale-subresource writes out.

One pass reads ``/jsz?consumers=true`` once from each monitoring URL (every consumer of
every stream), then decides each autoscaled Worker tier whose ``pollingSeconds`` have
elapsed with ``scaler.decide`` and sets replicas through the Deployment scale subresource
as field manager ``loom-autoscaler``. It runs only when KEDA is not in use. A tier whose
consumer does not exist yet has no lag (new Deployments start with one replica, whose
worker creates the durable consumer, so a tier can always be scaled back up).

On a JetStream cluster only the server leading a consumer knows its counts; the others
report stale ones (often 0). So the monitoring URL lists every server, and a consumer's
lag is taken from the server that says it leads it; while no reachable server does (a
leader election), the tier keeps its size instead of acting on a stale number.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from loom import subjects
from loom.api import Autoscaling
from loom.clock import Clock
from loom_operator import metrics
from loom_operator.k8s import Kube, KubeError
from loom_operator.kind_status import Observation
from loom_operator.reconcile import Reconciler
from loom_operator.scaler import Decision, decide

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """One autoscaled tier Deployment."""

    namespace: str
    worker: str
    worker_type: str
    tier: str
    deployment: str
    autoscaling: Autoscaling
    current: int | None

    @property
    def consumer(self) -> str:
        return subjects.worker_consumer(self.worker_type, self.tier)


def consumer_lags(
    jsz: dict[str, Any],
    stream: str = subjects.STREAM_TASKS,
    account: str = "$G",
    server_name: str | None = None,
) -> dict[str, int | None]:
    """``num_pending + num_ack_pending`` per consumer of ``stream`` from one server's ``/jsz`` document.

    With ``server_name`` (that server's name), a replicated consumer led by another server maps
    to None: it exists, but this server's counts for it are not authoritative.
    """
    lags: dict[str, int | None] = {}
    for acc in jsz.get("account_details") or []:
        if account not in (acc.get("name"), acc.get("id")):
            continue
        for st in acc.get("stream_detail") or []:
            if st.get("name") != stream:
                continue
            for c in st.get("consumer_detail") or []:
                leader = (c.get("cluster") or {}).get("leader")
                replicated = bool((c.get("cluster") or {}).get("replicas"))
                if server_name is not None and replicated and leader != server_name:
                    lags[c["name"]] = None
                else:
                    lags[c["name"]] = int(c.get("num_pending", 0)) + int(c.get("num_ack_pending", 0))
    return lags


def leader_lags(views: Sequence[dict[str, int | None]]) -> dict[str, int | None]:
    """One lag per consumer from every server's view: the leader's count where some server leads
    it, None where the consumer exists but no view is authoritative (no leader reachable)."""
    out: dict[str, int | None] = {}
    for view in views:
        for name, lag in view.items():
            if lag is not None:
                out[name] = lag
            else:
                out.setdefault(name, None)
    return out


def monitor_urls(monitor_url: str) -> list[str]:
    """The monitoring URLs in ``LOOM_NATS_MONITOR_URL`` (comma-separated: every server of a cluster)."""
    return [u.strip().rstrip("/") for u in monitor_url.split(",") if u.strip()]


async def fetch_lags(http: httpx.AsyncClient, monitor_url: str, account: str = "$G") -> dict[str, int | None]:
    """Lag per consumer of the task stream, read from every server in ``monitor_url`` (see
    :func:`leader_lags`). Servers that do not answer are skipped; HTTPError when none does."""
    views: list[dict[str, int | None]] = []
    failures: list[str] = []
    urls = monitor_urls(monitor_url)
    for url in urls:
        try:
            name = None
            if len(urls) > 1:
                varz = await http.get(f"{url}/varz")
                varz.raise_for_status()
                name = str(varz.json().get("server_name") or "") or None
            resp = await http.get(
                f"{url}/jsz",
                params={"accounts": "true", "streams": "true", "consumers": "true", "limit": "100000"},
            )
            resp.raise_for_status()
            views.append(consumer_lags(resp.json(), account=account, server_name=name))
        except httpx.HTTPError as exc:
            failures.append(f"{url}: {exc}")
    if not views:
        raise httpx.HTTPError(f"no NATS monitoring endpoint answered ({'; '.join(failures)})")
    if failures:
        log.warning("scaler: some NATS servers did not answer: %s", "; ".join(failures))
    return leader_lags(views)


class ScalerLoop:
    """Periodic scaler passes; ``targets`` yields the autoscaled tiers as currently known."""

    def __init__(
        self,
        kube: Kube,
        reconciler: Reconciler,
        monitor_url: str,
        targets: Callable[[], Sequence[Target]],
        *,
        interval: float,
        on_observed: Callable[[str, str], Any] | None = None,
        clock: Clock = time.monotonic,
        active: Callable[[], Awaitable[bool]] | None = None,
        account: str = "$G",
    ):
        self.kube = kube
        #: NATS account of Loom's streams in the /jsz document.
        self.account = account
        self.reconciler = reconciler
        self.monitor_url = monitor_url.rstrip("/")
        self.targets = targets
        self.interval = interval
        self.on_observed = on_observed
        self.clock = clock
        #: Whether this replica may scale (a paused hot standby may not); None = always.
        self.active = active
        self.last_needed: dict[tuple[str, str], float] = {}
        self.last_polled: dict[tuple[str, str], float] = {}
        #: (worker, tier) of the scaler series this loop has set, dropped once the tier is gone.
        self._series: set[tuple[str, str]] = set()
        self._http = httpx.AsyncClient(timeout=10.0)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def run_forever(self) -> None:
        while True:
            if self.active is None or await self.active():
                try:
                    await self.tick()
                except (httpx.HTTPError, ValueError) as exc:
                    metrics.SCALER_ERRORS.labels("lag").inc()
                    log.warning("scaler: cannot read lag from %s: %s", self.monitor_url, exc)
            await asyncio.sleep(self.interval)

    async def tick(self) -> list[tuple[Target, Decision]]:
        """One pass over every due tier; returns what was decided."""
        now = self.clock()
        targets = self.targets()
        for worker, tier in self._series - {(t.worker, t.tier) for t in targets}:
            metrics.forget_tier(worker, tier)  # the Worker, its tier or its autoscaling is gone
            self._series.discard((worker, tier))
        due = [
            t
            for t in targets
            if now - self.last_polled.get((t.namespace, t.deployment), float("-inf"))
            >= t.autoscaling.polling_seconds
        ]
        if not due:
            return []
        lags = await fetch_lags(self._http, self.monitor_url, self.account)
        decided: list[tuple[Target, Decision]] = []
        touched: set[tuple[str, str]] = set()
        for target in due:
            key = (target.namespace, target.deployment)
            self.last_polled[key] = now
            if target.current is None:
                continue  # the Deployment is not there yet; the reconciler creates it
            lag = lags.get(target.consumer, 0)
            if lag is None:  # the consumer exists, but no reachable server leads it right now
                log.info("scaler: %s has no leader answering; keeping %s", target.consumer, target.deployment)
                self.last_polled.pop(key, None)
                continue
            decision = decide(lag, target.current, self.last_needed.get(key), target.autoscaling, now)
            self.last_needed[key] = decision.last_needed
            metrics.SCALER_LAG.labels(target.worker, target.tier).set(lag)
            metrics.SCALER_DESIRED.labels(target.worker, target.tier).set(decision.desired)
            self._series.add((target.worker, target.tier))
            if decision.desired != target.current:
                try:
                    await self.kube.scale(target.namespace, target.deployment, decision.desired)
                    log.info(
                        "scaler: %s/%s %d -> %d (lag %d, %s)",
                        target.namespace,
                        target.deployment,
                        target.current,
                        decision.desired,
                        lag,
                        decision.reason,
                    )
                except KubeError as exc:
                    metrics.SCALER_ERRORS.labels("scale").inc()
                    log.warning("scaler: cannot scale %s/%s: %s", target.namespace, target.deployment, exc)
                    continue
            obs = Observation(lag=lag, desired=decision.desired)
            if self.reconciler.observe(target.namespace, target.worker, target.tier, obs):
                touched.add((target.namespace, target.worker))
            decided.append((target, decision))
        if self.on_observed is not None:
            for namespace, worker in sorted(touched):
                await self.on_observed(namespace, worker)
        return decided
