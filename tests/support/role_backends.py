"""The bus a role test runs on: the in-memory twin or a real nats-server, one test body for both.

A test takes the ``backend`` fixture (import it into the test module). Its parameters are
``memory`` (a :class:`MemoryBroker`; each ``backend.bus()`` is a new :class:`MemoryBus` on it, like
a new connection) and ``nats`` (a real nats-server, marked ``integration``). A test that needs one
of them only says so with ``@pytest.mark.parametrize("backend", ["memory"], indirect=True)``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest

from loom.api.pipeline import PipelineSpec
from loom.audit import AuditRecord
from loom.bus import Bus, RouterBus, StoredDeadLetter
from loom.bus.memory import MemoryBroker, MemoryBus
from loom.pipeline.service import PipelineOptions, PipelineService
from loom.settings import NatsSettings
from tests.support.pipelines import running_service


class ScenarioBus(RouterBus, Protocol):
    """The roles' and the router's bus plus what a test reads back."""

    async def stream_messages(self, stream: str) -> int: ...

    async def dead_letters(self) -> list[StoredDeadLetter]: ...

    async def audit_records(self, tenant: str | None = None) -> list[AuditRecord]: ...


Connect = Callable[[], Awaitable[ScenarioBus]]


@dataclass
class Backend:
    """Connections to one bus backend; every connection and role is stopped and closed at the end."""

    name: str
    connect: Connect
    buses: list[ScenarioBus] = field(default_factory=list)
    roles: list[tuple[asyncio.Event, asyncio.Task[None]]] = field(default_factory=list)

    async def bus(self) -> ScenarioBus:
        b = await self.connect()
        self.buses.append(b)
        return b

    async def start(
        self, run: Callable[[asyncio.Event], Coroutine[Any, Any, None]], ready: Callable[[], bool]
    ) -> None:
        """Run a role until the end of the test; returns once it is bound to its consumer."""
        stop = asyncio.Event()
        task = asyncio.create_task(run(stop))
        self.roles.append((stop, task))
        async with asyncio.timeout(15):
            while not ready():
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)

    async def stop_all(self) -> None:
        for stop, _ in self.roles:
            stop.set()
        await asyncio.gather(*(t for _, t in self.roles))
        self.roles.clear()

    async def close(self) -> None:
        await self.stop_all()
        for b in self.buses:
            await b.close()


@pytest.fixture(params=["memory", pytest.param("nats", marks=pytest.mark.integration)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        broker = MemoryBroker()

        async def connect() -> ScenarioBus:
            return MemoryBus(broker)

    elif request.param == "nats":
        url: str = request.getfixturevalue("nats_url")

        async def connect() -> ScenarioBus:
            return await Bus.connect(NatsSettings(url=url, name="scenario"))

    else:
        raise ValueError(f"unknown bus backend {request.param!r}: memory or nats")
    b = Backend(request.param, connect)
    try:
        yield b
    finally:
        await b.close()


#: A test that only runs on the in-memory bus (its real-server case is covered elsewhere: say where).
memory_only = pytest.mark.parametrize("backend", ["memory"], indirect=True)


@contextlib.asynccontextmanager
async def running_pipeline_on(
    backend: Backend, spec: dict[str, Any] | PipelineSpec, options: PipelineOptions | None = None
) -> AsyncIterator[PipelineService]:
    """A PipelineService on its own connection of ``backend``, consuming its goals until the block ends."""
    if not isinstance(spec, PipelineSpec):
        spec = PipelineSpec.model_validate(spec)
    service = PipelineService(spec, await backend.bus(), options)
    async with running_service(service, "pipeline service") as running:
        yield running
