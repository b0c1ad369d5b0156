"""What the roles need of a bus: :class:`RoleBus` for the roles that run work (worker, pipeline,
orchestrator), :class:`RouterBus` for the router.

:class:`~loom.bus.Bus` (NATS JetStream) and :class:`~loom.bus.memory.MemoryBus` (in memory, for
scenario tests) both provide them; mypy checks that the roles use nothing else, so the same role
code runs on either.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

    from loom.api.router_policy import StreamLimits
    from loom.audit import AuditWriter
    from loom.bus.consumers import ConsumerLag
    from loom.bus.publish import ResultSubscription
    from loom.bus.pull import Delivery
    from loom.bus.streams import StoredMessage
    from loom.messages import DeadLetter, GoalMessage, GoalResult, TaskMessage, TaskResult
    from loom.state_store import KeyValueStore


class RoleBus(Protocol):
    """The bus API of the worker, pipeline and orchestrator roles."""

    #: Bumped on every reconnect (results sent meanwhile may be lost: goals ask again).
    epoch: int
    #: Seconds a stored write or a JetStream request may take (``NatsSettings.publish_timeout``).
    timeout: float

    @property
    def is_connected(self) -> bool: ...

    @property
    def audit(self) -> AuditWriter: ...

    async def ensure_worker_consumer(
        self, worker_type: str, tier: str, *, ack_wait: float, max_deliver: int, max_ack_pending: int
    ) -> str: ...

    async def ensure_goal_consumer(
        self, pipeline: str | None, *, ack_wait: float, max_deliver: int, max_ack_pending: int
    ) -> str: ...

    async def consume(
        self,
        stream: str,
        durable: str,
        handler: Callable[[Delivery], Awaitable[None]],
        *,
        max_in_flight: int,
        batch: int,
        stop: asyncio.Event,
        drain_grace: float = 30.0,
        on_bound: Callable[[], None] | None = None,
        ahead: int = 0,
    ) -> None: ...

    async def consumer_info(self, stream: str, durable: str) -> ConsumerLag: ...

    async def js_publish(
        self, subject: str, data: bytes, *, msg_id: str | None = None, headers: dict[str, str] | None = None
    ) -> int: ...

    async def ensure_audit_stream(self, max_age: float, set_age: bool) -> None: ...

    async def publish_task(
        self, task: TaskMessage, *, subject: str | None = None, msg_id: str | None = None
    ) -> None: ...

    async def publish_goal(self, goal: GoalMessage, *, msg_id: str | None = None) -> None: ...

    async def publish_result(self, result: TaskResult | GoalResult) -> None: ...

    async def publish_raw(self, subject: str, data: bytes) -> None: ...

    async def publish_dead_letter(self, dl: DeadLetter) -> None: ...

    async def subscribe_results(self, key: str, tenant: str = ...) -> ResultSubscription: ...

    def key_value_store(self, bucket: str, *, ttl: float | None = None) -> KeyValueStore: ...

    async def close(self) -> None: ...


class KeyValueHandle(Protocol):
    """A Key-Value bucket as :meth:`Bus.key_value` hands it out (a JetStream bucket, or the twin's):
    what the helpers of :mod:`loom.bus.kv` call."""

    async def get(self, key: str) -> KeyValue.Entry: ...

    async def put(self, key: str, value: bytes) -> int: ...

    async def update(self, key: str, value: bytes, last: int | None = None) -> int: ...

    async def purge(self, key: str) -> bool: ...


class RouterBus(RoleBus, Protocol):
    """The router's bus API: the roles' plus stream upkeep, its consumers, every result, stored
    messages by sequence and Key-Value buckets (its limits and budgets)."""

    async def ensure_streams(self, limits: StreamLimits | None = None) -> None: ...

    async def ensure_router_consumer(
        self, *, ack_wait: float, max_deliver: int, max_ack_pending: int
    ) -> str: ...

    async def ensure_advisory_consumer(self) -> str: ...

    async def subscribe_all_results(self, cb: Callable[[bytes], None]) -> Any: ...

    async def consumer_filters(self, stream: str) -> dict[str, str]: ...

    async def subjects_without_consumer(self, stream: str, pattern: str) -> dict[str, int]: ...

    async def next_stored(self, stream: str, subject: str, from_seq: int) -> StoredMessage | None: ...

    async def get_stream_message(self, stream: str, seq: int) -> StoredMessage | None: ...

    async def delete_stream_message(self, stream: str, seq: int) -> bool: ...

    async def key_value(self, bucket: str, *, ttl: float | None = None) -> KeyValueHandle: ...
