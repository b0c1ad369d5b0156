"""Running pipeline services in-process and submitting goals to them, over a real NATS server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol, TypeVar

from loom.api.pipeline import PipelineSpec
from loom.bus import Bus, RoleBus
from loom.messages import GoalMessage, GoalResult
from loom.pipeline.service import PipelineOptions, PipelineService
from loom.settings import NatsSettings


class Service(Protocol):
    """A role run in-process: ``run(stop)`` until stopped, ``ready`` set once its consumer is bound."""

    ready: asyncio.Event

    async def run(self, stop: asyncio.Event) -> None: ...


S = TypeVar("S", bound=Service)


@contextlib.asynccontextmanager
async def running_service(service: S, what: str) -> AsyncIterator[S]:
    """Run ``service`` until the block ends; fails at once if it dies before binding its consumer."""
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    ready = asyncio.create_task(service.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        ready.cancel()
        task.result()
    assert ready in done, f"{what} did not bind its consumer"
    try:
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@contextlib.asynccontextmanager
async def running_pipeline(
    url: str, spec: dict[str, Any] | PipelineSpec, options: PipelineOptions | None = None
) -> AsyncIterator[PipelineService]:
    """A PipelineService on its own connection, consuming its goals until the block ends."""
    if not isinstance(spec, PipelineSpec):
        spec = PipelineSpec.model_validate(spec)
    bus = await Bus.connect(NatsSettings(url=url, name="test-pipeline"), role="pipeline")
    try:
        service = PipelineService(spec, bus, options)
        async with running_service(service, "pipeline service") as running:
            yield running
    finally:
        await bus.close()


async def submit(bus: RoleBus, goal: GoalMessage, within: float = 30.0) -> GoalResult:
    """Subscribe to the goal's result, publish the goal, wait for the GoalResult."""
    sub = await bus.subscribe_results(goal.goal_id)
    try:
        await bus.publish_goal(goal)
        return await wait_goal_result(sub, within)
    finally:
        await sub.close()


async def wait_goal_result(sub: Any, within: float) -> GoalResult:
    """The first GoalResult on a result subscription (stage results on the same subject are skipped)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        data = await sub.get(timeout=max(0.0, deadline - loop.time()))
        with contextlib.suppress(ValueError):  # stage results on the same subject are not goal results
            return GoalResult.from_bytes(data)
