"""The router on the bus: pulls ``loom.tasks.incoming`` through the one shared durable, applies the
routing decision and the limits, forwards the original bytes to ``loom.tasks.<type>.<tier>``.

* Each incoming message is forwarded with ``Nats-Msg-Id: in-<stream seq>``, so a
  router that dies between forwarding and acking cannot make a duplicate.
* A task over a limit is held un-acked (kept alive with in-progress acks) until
  capacity frees up or ``onLimit.maxWaitSeconds`` passes; then it is a dead letter.
* Results on ``loom.results.>`` release the concurrency and correct the token
  estimate of this replica's own dispatches, and settle their budget reservations.
* Budgets (:mod:`loom.router.budgets`) are reserved before a task is dispatched, in
  counters all replicas share; a task over one is a dead letter ``budget_exhausted``,
  at once or after waiting, as ``budgets.onExhausted`` says.
* With more than one replica (or ``limits="shared"``) the limits are shared through a
  Key-Value bucket (:mod:`loom.router.shared_limits`), exact across replicas; with one,
  this process alone keeps them.
* The captured MAX_DELIVERIES advisories (tasks, router input and goals) become
  ``max_deliveries`` dead letters carrying the original message, which is then
  removed from its work queue; the caller gets a failed TaskResult or GoalResult.
* Tasks stored for a (worker type, tier) that no worker consumer exists for are
  counted in ``loom_router_tasks_without_worker``; after ``no_worker_wait`` seconds
  they become ``no_worker`` dead letters (removed from the queue, the caller gets a
  failed result). A worker creates its consumer when it first starts, so tasks for a
  worker that was deployed and is scaled down or restarting keep waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from pydantic import ValidationError

from loom import metrics, tracing
from loom.api.router_policy import RouterConfig, RouterPolicySpec
from loom.audit import dead_letter_record
from loom.bus import (
    ADVISORY_CONSUMER,
    STREAM_ADVISORIES,
    BusError,
    Delivery,
    RouterBus,
    StoredMessage,
    kv_put,
)
from loom.clock import Clock
from loom.costs import COST_SCALE
from loom.dead_letters import build_dead_letter, dead_letter_of
from loom.messages import (
    DeadLetter,
    DeadLetterReason,
    GoalMessage,
    GoalResult,
    TaskMessage,
    TaskResult,
    TaskStatus,
    TokenUsage,
    describe_validation_error,
    stamp_tenant,
    utcnow,
)
from loom.quotas import payload_problem
from loom.router.budget_ledger import BudgetLedger, Exhausted, budget_usage
from loom.router.budgets import BUDGETS_BUCKET, BUDGETS_TTL, Hold, estimate_usage
from loom.router.limits import AdmissionQueue, Limiter, LimitSet, Request, Ticket
from loom.router.routing import Rejection, Route, RoutingTable, estimate_tokens
from loom.router.shared_limits import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_WINDOW_SECONDS,
    LIMITS_BUCKET,
    SharedLimits,
    limits_mode,
    wait_any,
    wait_event,
)
from loom.router.usage import LOCAL_USE_KEY, local_use
from loom.subjects import ROUTER_CONSUMER, STREAM_GOALS, STREAM_INCOMING, STREAM_TASKS, tenant_of_subject

log = logging.getLogger(__name__)

#: Metadata (bytes of JSON) an oversized task's failed result still carries back to its caller.
_RESULT_METADATA_MAX = 4096


@dataclass
class RouterOptions:
    """Tuning of one router process."""

    max_in_flight: int = 4096  # messages held at once, waiting ones included
    batch: int = 256
    ack_wait: float = 30.0
    max_deliver: int = 10
    #: Seconds a dispatch holds its capacity without a result; None: from the worker (see ``inflight_lease``).
    dispatch_lease: float | None = None
    #: How often idle tenant limit sets are dropped.
    evict_interval: float = 60.0
    lag_interval: float = 5.0
    drain_grace: float = 10.0
    #: Seconds a task may wait for a (worker type, tier) that no worker consumes; 0: wait forever.
    no_worker_wait: float = 300.0
    #: How often stored tasks are checked for a missing worker.
    no_worker_interval: float = 5.0
    #: ``auto`` (local for one replica, shared for more), ``local`` or ``shared``.
    limits: str = "auto"
    #: Seconds of a shared limit window (per-minute limits are scaled to it).
    limit_window: float = DEFAULT_WINDOW_SECONDS
    #: Seconds a replica's shared in-flight slots stay held once it stops renewing them.
    limit_lease: float = DEFAULT_LEASE_SECONDS
    #: How often the budget gauges are read from the shared counters (and, with limits kept in
    #: memory, how often their use is stored for readers).
    budget_interval: float = 15.0


def build_limiter(
    policy: RouterPolicySpec, options: RouterOptions, clock: Clock = time.monotonic
) -> tuple[Limiter, SharedLimits | None]:
    """The limiter of one replica and, in shared mode, what shares it; ValueError for limits that
    cannot work (a window too short for a limit, a concurrency split below one per replica)."""
    shared = None
    if limits_mode(options.limits, policy.replicas) == "shared":
        shared = SharedLimits(options.limit_window, options.limit_lease)
    return Limiter(policy, clock, factory=shared.limit_set if shared else None), shared


class _ShuttingDown(Exception):
    """The router stops; a waiting task goes back to the stream for another replica."""


class RouterService:
    """One router replica. Its decisions read ``clock`` (limits, waits, leases, idle tenants, gauges);
    only the in-progress acks keep real time, as the server's ``ack_wait`` does. A test that moves the
    clock by hand sets ``wake`` so the router looks again at once."""

    def __init__(
        self,
        bus: RouterBus,
        config: RouterConfig,
        options: RouterOptions | None = None,
        clock: Clock = time.monotonic,
    ):
        self.bus = bus
        self.table = RoutingTable(config)
        self.options = options or RouterOptions()
        self.clock = clock
        self.limiter, self.shared = build_limiter(config.policy, self.options, clock)
        self.queue = AdmissionQueue(self.limiter, config.policy.on_limit.max_wait_seconds)
        self.dispatched: dict[str, tuple[Ticket, float]] = {}
        self.wake = asyncio.Event()
        self.bound = False
        self._routed: dict[tuple[str, str], Any] = {}
        self._keepalive = max(1.0, self.options.ack_wait / 3)
        self._served: dict[str, frozenset[str]] = {}
        self._served_at = -1e9
        self._served_lock = asyncio.Lock()
        self.ledger: BudgetLedger | None = None
        #: Budget reservations of dispatched tasks: task id -> (holds, reserved tier, lease end).
        self.holds: dict[str, tuple[list[Hold], str, float]] = {}
        self._budget_freed = asyncio.Event()
        #: Deliveries held while they wait for budget (kept alive with the admission waiters).
        self._budget_waiting: set[Delivery] = set()
        self._settling: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()

    @property
    def ready(self) -> bool:
        """NATS connected and the incoming consumer bound."""
        return self.bound and self.bus.is_connected

    async def run(self, stop: asyncio.Event) -> None:
        """Route until ``stop`` is set, then hand waiting tasks back and return."""
        o = self.options
        self._stop = stop
        await self.bus.ensure_streams(self.table.policy.streams)  # the router owns the stream limits
        await self.bus.ensure_router_consumer(
            ack_wait=o.ack_wait,
            max_deliver=o.max_deliver,
            max_ack_pending=o.max_in_flight * self.limiter.replicas,
        )
        await self.bus.ensure_advisory_consumer()
        limits_kv = None
        # shared, or in memory (then a snapshot of the use, for status and `loom budget`)
        if self.shared is not None or self._has_limits():
            ttl = max(3600.0, 4 * o.limit_window)  # windows outlive their counters by far; leases are renewed
            limits_kv = await self.bus.key_value(LIMITS_BUCKET, ttl=ttl)
        if self.table.policy.budgets.tiers or self.table.policy.budgets.tenants:
            kv = await self.bus.key_value(BUDGETS_BUCKET, ttl=BUDGETS_TTL)
            self.ledger = BudgetLedger(self.table.policy, kv)
            for b in self.ledger.budgets:
                scale = COST_SCALE if b.unit == "cost" else 1
                metrics.BUDGET_LIMIT.labels(b.label).set(b.limit / scale)
        results_sub = await self.bus.subscribe_all_results(self._on_result)

        def bound() -> None:
            self.bound = True

        side = [
            asyncio.create_task(self._pump_loop(stop), name="router-pump"),
            asyncio.create_task(self._keepalive_loop(stop), name="router-keepalive"),
            self._every("router-lag", o.lag_interval, self._read_lag, "consumer info"),
            self._every("router-no-worker", o.no_worker_interval, self.sweep_no_worker, "no-worker check"),
        ]
        if self.ledger:
            side.append(
                self._every("router-budgets", o.budget_interval, self._read_budgets, "reading budgets")
            )
        if self.shared is not None:
            run = self.shared.run(limits_kv, self._limit_sets, self._waiting_requests, self.wake, stop)
            side.append(asyncio.create_task(run, name="router-shared-limits"))
        elif limits_kv:
            store = partial(self._store_local_use, limits_kv)
            side.append(self._every("router-local-use", o.budget_interval, store, "storing the limit use"))
        side.append(
            asyncio.create_task(
                self.bus.consume(
                    STREAM_ADVISORIES,
                    ADVISORY_CONSUMER,
                    self._handle_advisory,
                    max_in_flight=8,
                    batch=8,
                    stop=stop,
                ),
                name="router-advisories",
            )
        )
        try:
            await self.bus.consume(
                STREAM_INCOMING,
                ROUTER_CONSUMER,
                self._handle,
                max_in_flight=o.max_in_flight,
                batch=o.batch,
                stop=stop,
                drain_grace=o.drain_grace,
                on_bound=bound,
            )
        finally:
            self.bound = False
            stop.set()
            await asyncio.gather(*side, return_exceptions=True)
            with contextlib.suppress(Exception):
                await results_sub.unsubscribe()

    def _limit_sets(self) -> list[LimitSet]:
        return [*self.limiter.tiers.values(), *self.limiter.tenants.values()]

    def _waiting_requests(self) -> list[Request]:
        return [req for _, req in self.queue.waiting]

    # -- incoming tasks -----------------------------------------------------------------------------------

    async def _handle(self, d: Delivery) -> None:
        attrs = {"messaging.message.delivery_count": d.num_delivered}
        with tracing.span(
            "route", parent=tracing.extract(d.headers), kind=tracing.Kind.CONSUMER, attributes=attrs
        ):
            await self._route(d)

    async def _route(self, d: Delivery) -> None:
        too_large = payload_problem(len(d.data), self.table.policy.max_payload_bytes)
        if too_large is not None:
            await self._too_large(d, too_large)
            return
        try:
            task = TaskMessage.model_validate_json(d.data)
        except ValidationError as exc:
            await self._dead(d, DeadLetterReason.MALFORMED, describe_validation_error(exc), None)
            return
        # The tenant is the one the subject (tied to an identity by NATS permissions) names.
        task = task.model_copy(update={"tenant": tenant_of_subject(d.subject)})
        served = await self._served_tiers(task.worker_type) if self.table.needs_served_tiers(task) else ()
        decision = self.table.route(task, served)
        if isinstance(decision, Rejection):
            await self._dead(d, decision.reason, decision.detail, task)
            return
        holds: list[Hold] = []
        if self.ledger is not None and self.ledger.applies(decision.tier, task.tenant):
            reserved = await self._reserve_budget(d, task, decision.tier)
            if reserved is None:
                return
            holds = reserved
        try:
            go, ticket = await self._admit(d, task, decision)
        except BaseException:
            await self._release_budget(holds)
            raise
        if not go:
            await self._release_budget(holds)
            return
        await self._dispatch(d, task, decision, ticket, holds)

    async def _admit(self, d: Delivery, task: TaskMessage, decision: Route) -> tuple[bool, Ticket | None]:
        """Whether the task may go, and its rate-limit ticket (None: no limits apply); False when it
        was handed back or dead-lettered instead."""
        limits = self.limiter.limits_for(decision.tier, task.tenant)
        ticket: Ticket | None = None
        if limits:
            tokens = 0
            if any(ls.tokens is not None for ls in limits):
                tokens = estimate_tokens(len(d.data), self.table.max_output_tokens(task.worker_type))
            req = self.queue.request(decision.tier, task.tenant, tokens, int(task.priority))
            ticket = self.queue.submit(req)
            if ticket is None:
                try:
                    ticket = await self._wait(req, d, decision.tier)
                except _ShuttingDown:
                    await d.nak()  # straight back to the stream for another replica
                    return False, None
                if ticket is None:
                    metrics.RATE_LIMIT_REJECTIONS.labels(decision.tier).inc()
                    await self._dead(
                        d,
                        DeadLetterReason.RATE_LIMITED,
                        f"tier {decision.tier!r} / tenant {task.tenant!r} over its limits for "
                        f"{self.queue.max_wait:g}s",
                        task,
                        decision.tier,
                    )
                    return False, None
        return True, ticket

    async def _reserve_budget(self, d: Delivery, task: TaskMessage, tier: str) -> list[Hold] | None:
        """Reserve the task's estimate in its budgets; on none left, wait (``onExhausted: wait``, up to
        ``onLimit.maxWaitSeconds``) or dead-letter it. None when the task was settled otherwise."""
        assert self.ledger is not None
        estimate = estimate_usage(len(d.data) // 4, self.table.max_output_tokens(task.worker_type))
        deadline = self.clock() + self.queue.max_wait
        wait = self.table.policy.budgets.on_exhausted == "wait"
        self._budget_waiting.add(d)
        try:
            while True:
                got = await self.ledger.reserve(tier, task.tenant, estimate)
                self._budget_gauges()
                if not isinstance(got, Exhausted):
                    return got
                if self._stop.is_set():
                    await d.nak()
                    return None
                if not wait or self.clock() >= deadline:
                    metrics.BUDGET_EXHAUSTED.labels(got.budget.label).inc()
                    await self._dead(d, DeadLetterReason.BUDGET_EXHAUSTED, got.describe(), task, tier)
                    return None
                self._budget_freed.clear()
                # a refund here, or another replica's, or a new window
                with contextlib.suppress(TimeoutError):
                    pause = max(0.001, min(1.0, deadline - self.clock()))
                    await asyncio.wait_for(self._budget_freed.wait(), timeout=pause)
        finally:
            self._budget_waiting.discard(d)

    async def _release_budget(self, holds: list[Hold]) -> None:
        if holds and self.ledger is not None:
            await self.ledger.release(holds)
            self._budget_freed.set()
            self._budget_gauges()

    def _budget_gauges(self) -> None:
        if self.ledger is None:
            return
        for label, (_, total) in self.ledger.seen.items():
            scale = COST_SCALE if label.split("/")[1] == "cost" else 1
            metrics.BUDGET_USED.labels(label).set(total / scale)

    async def _served_tiers(self, worker_type: str) -> frozenset[str]:
        """The tiers whose worker consumers exist for ``worker_type``: re-read at most once a second
        for a type not seen yet, every 30 s otherwise."""
        async with self._served_lock:
            if self.clock() - self._served_at >= (30.0 if worker_type in self._served else 1.0):
                self._served_at = self.clock()
                try:
                    filters = (await self.bus.consumer_filters(STREAM_TASKS)).values()
                except Exception as exc:  # NATS away: route by the rules without it
                    log.debug("reading worker consumers failed: %s", exc)
                else:
                    self._served = _served_by_type(filters)
        return self._served.get(worker_type, frozenset())

    async def _wait(self, req: Request, d: Delivery, tier: str) -> Ticket | None:
        metrics.RATE_LIMIT_WAITS.labels(tier).inc()
        fut: asyncio.Future[Ticket | None] = asyncio.get_running_loop().create_future()
        req.item = (fut, d)
        self.wake.set()
        try:
            with tracing.span("admission wait", attributes={"loom.tier": tier}):
                return await fut
        except asyncio.CancelledError:
            self.queue.cancel(req)
            if fut.done() and not fut.cancelled() and fut.exception() is None and fut.result() is not None:
                self.limiter.release(fut.result())  # type: ignore[arg-type]
            raise

    async def _dispatch(
        self, d: Delivery, task: TaskMessage, route: Route, ticket: Ticket | None, holds: list[Hold]
    ) -> None:
        lease = self.options.dispatch_lease or self.table.inflight_lease(task.worker_type)
        if holds:
            self.holds[task.task_id] = (holds, route.tier, self.clock() + lease)
        if ticket is not None and ticket.tracked:
            earlier = self.dispatched.get(task.task_id)
            if earlier is not None:  # the same task id dispatched again: one hold per id
                self.limiter.release(earlier[0])
            self.dispatched[task.task_id] = (ticket, self.clock() + lease)
        try:
            body = stamp_tenant(d.data, task.tenant)  # the worker answers on the subject's tenant
            await self.bus.js_publish(route.subject, body, msg_id=f"in-{d.stream_seq}")
        except (BusError, TimeoutError, OSError) as exc:
            log.warning("forwarding task %s to %s failed (%s); will retry", task.task_id, route.subject, exc)
            if ticket is not None:
                self.dispatched.pop(task.task_id, None)
                self.limiter.release(ticket)
                self.wake.set()
            if holds:
                self.holds.pop(task.task_id, None)
                await self._release_budget(holds)
            await d.nak(delay=1.0)
            return
        await d.ack()
        counter = self._routed.get((route.worker_type, route.tier))
        if counter is None:
            counter = self._routed[(route.worker_type, route.tier)] = metrics.ROUTED.labels(
                route.worker_type, route.tier
            )
        counter.inc()

    async def _dead(
        self,
        d: Delivery,
        reason: DeadLetterReason,
        detail: str,
        task: TaskMessage | None,
        tier: str | None = None,
        *,
        with_original: bool = True,
    ) -> None:
        dl = dead_letter_of(d, reason, detail, stream=STREAM_INCOMING, role="router", task=task, tier=tier)
        await self.bus.publish_dead_letter(dl if with_original else dl.model_copy(update={"original": ""}))
        self.bus.audit.emit(dead_letter_record(dl))
        if task is not None:
            await self.bus.publish_result(_failed(task, tier, reason.value, f"{reason.value}: {detail}"))
        await d.term()
        metrics.DEAD_LETTERS.labels(reason.value, "router").inc()

    async def _too_large(self, d: Delivery, detail: str) -> None:
        """Dead-letter an oversized task without its body (keeping it would fill the dead-letter
        stream the same way); the caller still gets a failed result when the task parses."""
        task: TaskMessage | None = None
        with contextlib.suppress(ValidationError):
            task = TaskMessage.model_validate_json(d.data)
            small = len(json.dumps(task.metadata, default=str)) <= _RESULT_METADATA_MAX
            slim = {"payload": {}, "metadata": task.metadata if small else {}}
            task = task.model_copy(update={"tenant": tenant_of_subject(d.subject), **slim})
        await self._dead(d, DeadLetterReason.TOO_LARGE, detail, task, with_original=False)

    # -- results, waiting, leases ---------------------------------------------------------------------------

    def _on_result(self, data: bytes) -> None:
        if not self.dispatched and not self.holds:
            return
        try:
            doc = json.loads(data)
        except ValueError:
            return
        if not isinstance(doc, dict):
            return
        task_id = str(doc.get("task_id"))
        entry = self.dispatched.pop(task_id, None)
        held = self.holds.pop(task_id, None)
        if entry is None and held is None:
            return
        raw = doc.get("token_usage") or {}
        usage: TokenUsage | None = None
        if isinstance(raw, dict):
            with contextlib.suppress(ValidationError):
                usage = TokenUsage.model_validate(raw)
        answered = doc.get("model_tier")
        if entry is not None:
            ticket = entry[0]
            if isinstance(answered, str) and answered != ticket.tier and usage is not None:
                self.limiter.release_answered_by(ticket, answered, float(usage.limited_tokens))
            else:
                self.limiter.release(ticket, None if usage is None else float(usage.limited_tokens))
            self.wake.set()
        if held is not None and doc.get("error_code") == DeadLetterReason.MAX_DELIVERIES.value:
            held = None  # its attempts died unreported: the model may have been called, the estimate stays
        if held is not None:
            holds, tier, _ = held
            by = answered if isinstance(answered, str) and answered else tier
            job = asyncio.ensure_future(self._settle(holds, tier, by, usage or TokenUsage()))
            self._settling.add(job)
            job.add_done_callback(self._settling.discard)

    async def _settle(self, holds: list[Hold], tier: str, answered: str, usage: TokenUsage) -> None:
        """Correct a dispatch's budget reservations to the usage its result reports."""
        assert self.ledger is not None
        try:
            cost = await self.ledger.settle(holds, tier, answered, usage)
        except Exception as exc:  # the estimate stays charged: never under-counted
            log.warning("settling budgets for a %s result failed (%s); its estimate stays charged", tier, exc)
            return
        if cost:
            metrics.COST.labels(answered).inc(cost / COST_SCALE)
        self._budget_freed.set()
        self._budget_gauges()

    async def _pump_loop(self, stop: asyncio.Event) -> None:
        """Admit or expire waiting tasks and, as ``clock`` passes their intervals, release dispatches
        whose lease ran out (as often as waiting tasks are kept alive), drop idle tenant limit sets
        and refresh the gauges."""
        now = self.clock()
        next_leases = now + self._keepalive
        next_evict = now + self.options.evict_interval
        next_gauges = now
        while not stop.is_set():
            res = self.queue.pump()
            for req, ticket in res.admitted:
                fut = req.item[0] if req.item else None
                if fut is not None and not fut.done():
                    fut.set_result(ticket)
                else:
                    self.limiter.release(ticket)
            for req in res.expired:
                fut = req.item[0] if req.item else None
                if fut is not None and not fut.done():
                    fut.set_result(None)
            if self.shared is not None and self.queue.waiting:
                self.shared.poke()  # tasks wait: take what they need from the shared limits
            now = self.clock()
            if now >= next_leases:
                next_leases = now + self._keepalive
                self._expire_leases()
            if now >= next_evict:
                next_evict = now + self.options.evict_interval
                evicted = self.queue.evict_idle_tenants()
                if evicted:
                    log.debug("dropped %d idle tenant limit sets", evicted)
            if now >= next_gauges:
                next_gauges = now + 1.0
                self._update_gauges()
            timeout = min(next_leases, next_gauges, next_evict) - now
            if res.next_wake is not None:
                timeout = min(timeout, res.next_wake - now)
            self.wake.clear()
            await wait_any(self.wake, stop, max(timeout, 0.001))
        for _, req in list(self.queue.waiting):
            self.queue.cancel(req)
            fut = req.item[0] if req.item else None
            if fut is not None and not fut.done():
                fut.set_exception(_ShuttingDown())

    async def _keepalive_loop(self, stop: asyncio.Event) -> None:
        """An in-progress ack for every held task (waiting for capacity or for budget) each third of
        ``ack_wait``, so the server does not redeliver it. The server counts ``ack_wait`` in real time,
        so this loop sleeps in real time, whatever clock the router's decisions read."""
        while True:
            await wait_event(stop, self._keepalive)
            if stop.is_set():
                return
            held = [req.item[1] for _, req in self.queue.waiting if req.item]
            for d in [*held, *self._budget_waiting]:
                with contextlib.suppress(Exception):  # NATS away: the next round tries again
                    await d.in_progress()

    def _expire_leases(self) -> None:
        now = self.clock()
        stale = [tid for tid, (_, until) in self.dispatched.items() if until <= now]
        for tid in stale:
            ticket, _ = self.dispatched.pop(tid)
            self.limiter.release(ticket)
        if stale:
            log.warning("released %d dispatches whose results never came back", len(stale))
            self.wake.set()
        lost = [tid for tid, (_, _, until) in self.holds.items() if until <= now]
        for tid in lost:  # the model may have been called: the estimate stays charged
            del self.holds[tid]
        if lost:
            log.warning("%d budget reservations kept at their estimate: results never came back", len(lost))

    def _has_limits(self) -> bool:
        policy = self.table.policy
        return bool(policy.rate_limits or policy.tenant_limits.default or policy.tenant_limits.overrides)

    def _every(
        self, name: str, interval: float, step: Callable[[], Awaitable[object]], what: str
    ) -> asyncio.Task[None]:
        """A task running ``step`` every ``interval`` seconds until the router stops; a failed round
        (NATS away) is logged as ``what`` failed and the next one tries again."""
        stop = self._stop

        async def loop() -> None:
            while not stop.is_set():
                try:
                    await step()
                except Exception as exc:
                    log.debug("%s failed: %s", what, exc)
                await wait_event(stop, interval)

        return asyncio.create_task(loop(), name=name)

    async def _store_local_use(self, kv: Any) -> None:
        """Store this router's in-memory limit use (it is all the use), every ``budget_interval``."""
        use = local_use(self._limit_sets(), self.clock(), time.time())
        await kv_put(kv, LOCAL_USE_KEY, use, within=self.bus.timeout)

    def _update_gauges(self) -> None:
        now = self.clock()
        waiting: dict[str, int] = dict.fromkeys(self.limiter.tiers, 0)
        for _, req in self.queue.waiting:
            waiting[req.tier] = waiting.get(req.tier, 0) + 1
        for tier, count in waiting.items():
            metrics.RATE_LIMIT_WAITING.labels(tier).set(count)
        for tier, ls in self.limiter.tiers.items():
            if ls.requests is not None:
                metrics.TOKENS_AVAILABLE.labels(tier, "requests").set(ls.requests.available(now))
            if ls.tokens is not None:
                metrics.TOKENS_AVAILABLE.labels(tier, "tokens").set(ls.tokens.available(now))
            if ls.concurrency is not None:
                metrics.TIER_IN_FLIGHT.labels(tier).set(ls.concurrency.used)

    async def _read_budgets(self) -> None:
        """Refresh the budget gauges from the shared counters (other replicas' use, a new window)."""
        ledger = self.ledger
        assert ledger is not None
        for budget, window, total in await budget_usage(ledger.kv, self.table.policy, ledger.wall()):
            ledger.seen[budget.label] = (window, total)
        self._budget_gauges()

    async def _read_lag(self) -> None:
        lag = await self.bus.consumer_info(STREAM_INCOMING, ROUTER_CONSUMER)
        metrics.CONSUMER_LAG.labels(STREAM_INCOMING, ROUTER_CONSUMER).set(lag.total)
        metrics.CONSUMER_PENDING.labels(STREAM_INCOMING, ROUTER_CONSUMER).set(lag.num_pending)
        metrics.CONSUMER_ACK_PENDING.labels(STREAM_INCOMING, ROUTER_CONSUMER).set(lag.num_ack_pending)

    # -- tasks no worker consumes ------------------------------------------------------------------------

    async def sweep_no_worker(self) -> int:
        """Count tasks stored where no worker consumes; dead-letter those older than ``no_worker_wait``."""
        orphans = await self.bus.subjects_without_consumer(STREAM_TASKS, "loom.tasks.*.*")
        metrics.TASKS_WITHOUT_WORKER.set(sum(orphans.values()))
        wait = self.options.no_worker_wait
        if wait <= 0:
            return 0
        dead = 0
        for subject in orphans:
            seq = 1
            while (stored := await self.bus.next_stored(STREAM_TASKS, subject, seq)) is not None:
                age = (utcnow() - stored.stored_at).total_seconds() if stored.stored_at else 0.0
                if age < wait:
                    break
                detail = (
                    f"no worker consumes {subject} (no consumer was ever created for it); "
                    f"waited {age:.0f}s, no_worker_wait is {wait:g}s"
                )
                dl, result = _dead_stored(DeadLetterReason.NO_WORKER, stored, detail, None)
                await self.bus.publish_dead_letter(dl)
                if await self.bus.delete_stream_message(STREAM_TASKS, stored.seq):  # once across replicas
                    if result is not None:
                        await self.bus.publish_result(result)
                    self.bus.audit.emit(dead_letter_record(dl))
                    metrics.DEAD_LETTERS.labels(DeadLetterReason.NO_WORKER.value, "router").inc()
                    dead += 1
                seq = stored.seq + 1
        return dead

    # -- MAX_DELIVERIES advisories ------------------------------------------------------------------------

    async def _handle_advisory(self, d: Delivery) -> None:
        try:
            adv = json.loads(d.data)
            stream = str(adv["stream"])
            seq = int(adv["stream_seq"])
            deliveries = int(adv.get("deliveries", 0)) or None
            consumer = str(adv.get("consumer", "?"))
        except (ValueError, KeyError, TypeError) as exc:
            log.error("unreadable MAX_DELIVERIES advisory (%s): %r", exc, d.data[:200])
            await d.term()
            return
        stored = await self.bus.get_stream_message(stream, seq)
        if stored is None:
            await d.ack()  # settled meanwhile (acked, or already dead-lettered)
            return
        detail = f"delivered {deliveries} times to consumer {consumer} without being settled"
        dl, result = _dead_stored(DeadLetterReason.MAX_DELIVERIES, stored, detail, deliveries)
        with tracing.span("max deliveries", parent=tracing.extract(stored.headers)):
            await self.bus.publish_dead_letter(dl)
            if result is not None:
                await self.bus.publish_result(result)
            self.bus.audit.emit(dead_letter_record(dl))
        await self.bus.delete_stream_message(stream, seq)
        await d.ack()
        metrics.DEAD_LETTERS.labels(DeadLetterReason.MAX_DELIVERIES.value, "router").inc()


def _dead_stored(
    code: DeadLetterReason, stored: StoredMessage, detail: str, deliveries: int | None
) -> tuple[DeadLetter, TaskResult | GoalResult | None]:
    """The dead letter of a stored message that will not be done, and the failed result its caller awaits."""
    stream, seq, subject, data = stored.stream, stored.seq, stored.subject, stored.data
    error = f"{code.value}: {detail}"
    goal: GoalMessage | None = None
    task: TaskMessage | None = None
    tier: str | None = None
    # not routed yet: the subject names the tenant
    tenant = {"tenant": tenant_of_subject(subject)} if stream in (STREAM_GOALS, STREAM_INCOMING) else {}
    with contextlib.suppress(ValidationError):  # unreadable originals are dead-lettered all the same
        if stream == STREAM_GOALS:
            goal = GoalMessage.model_validate_json(data).model_copy(update=tenant)
        else:
            task = TaskMessage.model_validate_json(data).model_copy(update=tenant)
    parts = subject.split(".")
    if stream == STREAM_TASKS and len(parts) == 4:  # loom.tasks.<worker type>.<tier>
        tier = parts[3]
    dl = build_dead_letter(
        code,
        detail,
        subject=subject,
        data=data,
        origin=f"{stream}:{seq}",
        role="router",
        task=task,
        tier=tier,
        goal=goal,
        deliveries=deliveries,
    )
    result: TaskResult | GoalResult | None = None
    if goal is not None:
        result = GoalResult(
            goal_id=goal.goal_id,
            status=TaskStatus.FAILED,
            error=error,
            pipeline=goal.pipeline,
            tenant=goal.tenant,
            request_id=goal.request_id,
        )
    elif task is not None:
        result = _failed(task, tier, code.value, error)
    return dl, result


def _served_by_type(filters: Iterable[str]) -> dict[str, frozenset[str]]:
    """worker type -> tiers, from the filter subjects ``loom.tasks.<worker type>.<tier>`` of consumers."""
    out: dict[str, set[str]] = {}
    for f in filters:
        parts = f.split(".")
        if len(parts) == 4 and parts[:2] == ["loom", "tasks"] and "*" not in parts and ">" not in parts:
            out.setdefault(parts[2], set()).add(parts[3])
    return {wt: frozenset(tiers) for wt, tiers in out.items()}


def _failed(task: TaskMessage, tier: str | None, code: str, error: str) -> TaskResult:
    return TaskResult(
        task_id=task.task_id,
        parent_task_id=task.parent_task_id,
        worker_type=task.worker_type,
        status=TaskStatus.FAILED,
        error=error,
        error_code=code,
        model_tier=tier or task.model_tier,
        tenant=task.tenant,
        request_id=task.request_id,
        metadata=task.metadata,
    )
