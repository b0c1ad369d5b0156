"""``loom pipeline``: one pipeline's goal consumer, running up to ``max_concurrent_goals`` goals at once.

Each pipeline reads only ``loom.goals.<name>`` through its own durable consumer,
so pipelines never take each other's goals and replicas of one pipeline share
the work. A goal message is acknowledged only when the goal has finished; while
it runs, progress heartbeats keep JetStream from handing it to another replica.
If the process dies, the goal is redelivered after ``ack_wait`` and resumed from
its stored state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from loom import tracing
from loom.api.pipeline import PipelineSpec
from loom.bus import Delivery, RoleBus
from loom.clock import Clock
from loom.goal_delivery import read_goal
from loom.pipeline.plan import PipelinePlan
from loom.pipeline.runner import GoalRunner
from loom.pipeline.state import DEFAULT_STATE_TTL, StateStore
from loom.subjects import STREAM_GOALS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineOptions:
    """Delivery settings of the goal consumer."""

    #: Seconds without a heartbeat before a goal is handed to another replica.
    ack_wait: float = 30.0
    #: Deliveries of one goal (restarts included) before JetStream gives up on it.
    max_deliver: int = 10
    #: How long finished goals keep their result for replays.
    state_ttl: float = DEFAULT_STATE_TTL
    #: Where goal states live: None for the NATS KV bucket, or a redis:// / rediss:// URL (Redis, Valkey).
    state_url: str | None = None
    #: On shutdown, seconds running goals get before they are released to another replica.
    drain_grace: float = 5.0


class PipelineService:
    """Consumes one pipeline's goals until ``stop`` is set."""

    def __init__(
        self,
        spec: PipelineSpec,
        bus: RoleBus,
        options: PipelineOptions | None = None,
        *,
        clock: Clock = time.time,
    ):
        self.plan = PipelinePlan(spec)
        self.bus = bus
        self.options = options or PipelineOptions()
        self.clock = clock
        self.runner: GoalRunner | None = None
        self.ready = asyncio.Event()

    def is_ready(self) -> bool:
        """Readiness: started (consumer bound) and NATS connected right now, like workers and routers."""
        return self.ready.is_set() and self.bus.is_connected

    async def run(self, stop: asyncio.Event) -> None:
        """Consume goals until ``stop`` is set (the bus stays open: its owner closes it)."""
        bus = self.bus
        store = await StateStore.open(bus, ttl=self.options.state_ttl, url=self.options.state_url)
        try:
            self.runner = GoalRunner(bus, self.plan, store, clock=self.clock)
            spec = self.plan.spec
            durable = await bus.ensure_goal_consumer(
                self.plan.name,
                ack_wait=self.options.ack_wait,
                max_deliver=self.options.max_deliver,
                max_ack_pending=spec.max_concurrent_goals * max(1, spec.replicas) * 4,
            )
            log.info("pipeline %s: consuming %s (levels %s)", self.plan.name, durable, self.plan.levels)
            await bus.consume(
                STREAM_GOALS,
                durable,
                lambda d: self._handle(bus, d),
                max_in_flight=spec.max_concurrent_goals,
                batch=spec.max_concurrent_goals,
                stop=stop,
                drain_grace=self.options.drain_grace,
                on_bound=self.ready.set,
            )
        finally:
            self.ready.clear()
            await store.close()

    async def _handle(self, bus: RoleBus, d: Delivery) -> None:
        assert self.runner is not None
        attrs = {"messaging.message.delivery_count": d.num_delivered}
        parent = tracing.extract(d.headers)
        with tracing.span(
            f"pipeline {self.plan.name}", parent=parent, kind=tracing.Kind.CONSUMER, attributes=attrs
        ):
            goal = await read_goal(bus, d, "pipeline")
            if goal is None:
                return
            await self.runner.run(
                goal, heartbeat=d.in_progress, heartbeat_every=max(0.2, self.options.ack_wait / 3)
            )
        await d.ack()
