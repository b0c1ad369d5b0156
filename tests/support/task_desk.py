"""An in-process stand-in for router + workers: takes tasks from ``loom.tasks.incoming`` and answers them.

Coordinating roles (pipeline, orchestrator, scheduler) are tested against the
real NATS server; this desk plays the rest of the system at the same wire
boundary: it consumes the router's durable consumer, calls a handler per worker
type, and publishes the ``TaskResult`` on ``loom.results.<parent id>``. It
records every call, so tests can count how often each stage really ran.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from loom.bus import Bus, Delivery, RoleBus
from loom.messages import TaskMessage, TaskResult, TaskStatus
from loom.settings import NatsSettings
from loom.subjects import STREAM_INCOMING

Handler = Callable[[TaskMessage], Awaitable[dict[str, Any]]]


class DeskBus(RoleBus, Protocol):
    """What the desk uses of a bus: the roles' API plus the router's consumer."""

    async def ensure_router_consumer(
        self, *, ack_wait: float, max_deliver: int, max_ack_pending: int
    ) -> str: ...


@dataclass
class Call:
    task: TaskMessage
    started: float
    finished: float = 0.0


class HandlerFailed(Exception):
    """Raise from a handler to send a failed result with ``code``."""

    def __init__(self, message: str, code: str = "task_failed"):
        super().__init__(message)
        self.code = code


@dataclass
class TaskDesk:
    """``url``: a nats-server's URL, or a function connecting a bus (a connection of a test's
    ``backend``, memory or real); the desk closes the bus it connected."""

    url: str | Callable[[], Awaitable[DeskBus]]
    handlers: dict[str, Handler]
    max_in_flight: int = 64
    calls: list[Call] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _bus: DeskBus | None = None

    async def start(self) -> TaskDesk:
        if isinstance(self.url, str):
            self._bus = await Bus.connect(NatsSettings(url=self.url, name="task-desk"))
        else:
            self._bus = await self.url()
        durable = await self._bus.ensure_router_consumer(ack_wait=30, max_deliver=5, max_ack_pending=10_000)
        bound = asyncio.Event()
        self._task = asyncio.create_task(
            self._bus.consume(
                STREAM_INCOMING,
                durable,
                self._handle,
                max_in_flight=self.max_in_flight,
                batch=self.max_in_flight,
                stop=self.stop,
                drain_grace=1.0,
                on_bound=bound.set,
            )
        )
        await asyncio.wait_for(bound.wait(), 10)
        return self

    async def close(self) -> None:
        self.stop.set()
        if self._task is not None:
            await self._task
        if self._bus is not None:
            await self._bus.close()

    def count(self, worker_type: str | None = None) -> int:
        return sum(1 for c in self.calls if worker_type is None or c.task.worker_type == worker_type)

    def counts_by_stage(self) -> Counter[str]:
        return Counter(str(c.task.metadata.get("stage")) for c in self.calls)

    async def _handle(self, d: Delivery) -> None:
        assert self._bus is not None
        task = TaskMessage.from_bytes(d.data)
        call = Call(task, time.time())
        self.calls.append(call)
        handler = self.handlers[task.worker_type]
        try:
            output = await handler(task)
            result = TaskResult(
                task_id=task.task_id,
                parent_task_id=task.parent_task_id,
                worker_type=task.worker_type,
                status=TaskStatus.COMPLETED,
                output=output,
            )
        except HandlerFailed as exc:
            result = TaskResult(
                task_id=task.task_id,
                parent_task_id=task.parent_task_id,
                worker_type=task.worker_type,
                status=TaskStatus.FAILED,
                error=str(exc),
                error_code=exc.code,
            )
        call.finished = time.time()
        await self._bus.publish_result(result)
        await d.ack()
