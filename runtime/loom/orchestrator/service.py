"""``loom orchestrator``: takes goals from ``loom.goals.incoming`` and runs a GoalSession for each.

Goals are acknowledged only when finished; heartbeats keep a running goal from
redelivery. A goal redelivered after a crash resumes from its checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from loom import goal_metrics, tracing
from loom.api.worker import WorkerSpec
from loom.audit import goal_record
from loom.bus import Delivery, RoleBus
from loom.checkpoint import CheckpointStore, KVCheckpointStore, RedisCheckpointStore
from loom.clock import Clock
from loom.goal_delivery import read_goal
from loom.llm.base import Provider
from loom.messages import TaskStatus
from loom.orchestrator.config import OrchestratorConfig
from loom.orchestrator.session import GoalSession
from loom.subjects import STREAM_GOALS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OrchestratorOptions:
    ack_wait: float = 30.0
    max_deliver: int = 10
    drain_grace: float = 5.0


def checkpoint_store(config: OrchestratorConfig, bus: RoleBus) -> CheckpointStore:
    """The configured checkpoint backend."""
    cp = config.checkpoint
    if cp.backend == "redis":
        assert cp.url is not None
        return RedisCheckpointStore(cp.url, ttl=cp.ttl_seconds)
    return KVCheckpointStore(bus, ttl=cp.ttl_seconds)


class OrchestratorService:
    """Consumes the orchestrator's goals until ``stop`` is set."""

    def __init__(
        self,
        config: OrchestratorConfig,
        catalog: dict[str, WorkerSpec],
        bus: RoleBus,
        provider_factory: Callable[[], Provider],
        options: OrchestratorOptions | None = None,
        *,
        clock: Clock = time.time,
    ):
        self.config = config
        self.catalog = catalog
        self.bus = bus
        self.provider_factory = provider_factory
        self.options = options or OrchestratorOptions()
        self.clock = clock
        self.ready = asyncio.Event()
        self.session: GoalSession | None = None

    def is_ready(self) -> bool:
        """Readiness: started (consumer bound) and NATS connected right now, like workers and routers."""
        return self.ready.is_set() and self.bus.is_connected

    async def run(self, stop: asyncio.Event) -> None:
        """Consume goals until ``stop`` is set (the bus stays open: its owner closes it)."""
        bus = self.bus
        provider = self.provider_factory()
        store = checkpoint_store(self.config, bus)
        try:
            self.session = GoalSession(bus, self.config, self.catalog, provider, store, clock=self.clock)
            durable = await bus.ensure_goal_consumer(
                None,
                ack_wait=self.options.ack_wait,
                max_deliver=self.options.max_deliver,
                max_ack_pending=self.config.max_concurrent_goals * 16,
            )
            log.info(
                "orchestrator %s: consuming %s with workers %s",
                self.config.name,
                durable,
                ", ".join(sorted(self.catalog)),
            )
            await bus.consume(
                STREAM_GOALS,
                durable,
                lambda d: self._handle(bus, d),
                max_in_flight=self.config.max_concurrent_goals,
                batch=self.config.max_concurrent_goals,
                stop=stop,
                drain_grace=self.options.drain_grace,
                on_bound=self.ready.set,
            )
        finally:
            self.ready.clear()
            await store.close()
            await provider.close()

    async def _handle(self, bus: RoleBus, d: Delivery) -> None:
        attrs = {"messaging.message.delivery_count": d.num_delivered}
        parent = tracing.extract(d.headers)
        with tracing.span(
            f"orchestrator {self.config.name}", parent=parent, kind=tracing.Kind.CONSUMER, attributes=attrs
        ):
            await self._goal(bus, d)

    async def _goal(self, bus: RoleBus, d: Delivery) -> None:
        assert self.session is not None
        name = self.config.name
        goal = await read_goal(bus, d, "orchestrator")
        if goal is None:
            return
        goal_metrics.GOALS_RECEIVED.labels(name).inc()
        in_flight = goal_metrics.GOALS_IN_FLIGHT.labels(name)
        in_flight.inc()
        try:
            result = await self.session.run(
                goal, heartbeat=d.in_progress, heartbeat_every=max(0.2, self.options.ack_wait / 3)
            )
        finally:
            in_flight.dec()
        outcome = "completed" if result.status == TaskStatus.COMPLETED else "failed"
        goal_metrics.GOALS_COMPLETED.labels(name, outcome).inc()
        goal_metrics.GOAL_DURATION.labels(name).observe(
            result.processing_time_ms / 1000.0, tracing.exemplar()
        )
        bus.audit.emit(goal_record(result, role="orchestrator", with_payloads=bus.audit.payloads))
        await d.ack()
