"""An in-memory twin of the Bus for role scenario tests: no server, the same role code, milliseconds.

In the way FastStream's ``TestNatsBroker`` works, a :class:`MemoryBroker` plays the server
(streams, durable pull consumers, core subscriptions, Key-Value buckets) and each
:class:`MemoryBus` is one connection to it, implementing :class:`~loom.bus.protocol.RouterBus`, the
part of the Bus the router, worker, pipeline and orchestrator roles use. What it shares with the real bus
rather than imitates: the streams' names, subjects and retention (:func:`~loom.bus.streams._stream_configs`),
every subject and tenant rule (:mod:`loom.subjects`, NATS wildcard matching included), what is
sent for a task, goal, result or dead letter (:class:`~loom.bus.publish.Sender`), the settling
rules of a :class:`~loom.bus.pull.Delivery`, the audit writer and the result subscription.

JetStream behaviour modelled: work-queue streams drop a message once acknowledged or terminated;
``Nats-Msg-Id`` duplicates within the duplicate window are stored once; each durable consumer
delivers a message to one handler at a time, redelivers it after a nak (after its delay), after
``ack_wait`` without an ack or heartbeat, and stops after ``max_deliver`` deliveries (the message
stays stored, as on the server, and once it is due again a MAX_DELIVERIES advisory goes to the
advisories stream, while a pull loop is there to notice, as on the server); consumers bind to what the
stream already holds; Key-Value buckets keep per-key revisions for compare-and-set. These times
run on the broker's clock, which a test may drive by hand (no delay is then waited out). Not modelled:
stream limits, reconnects (``epoch`` stays 0), permissions. A Bus method the twin lacks raises
:class:`NotImplementedError` naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from loom import tracing
from loom.api.router_policy import StreamLimits
from loom.audit import AuditRecord, AuditWriter, unpack
from loom.bus.connection import BusError
from loom.bus.consumers import ConsumerLag, first_filters, uncovered
from loom.bus.dead_letters import StoredDeadLetter
from loom.bus.memory_broker import (
    Consumer,
    ConsumerConfig,
    CoreSub,
    MemoryBroker,
    MemoryKeyValue,
    MemoryKeyValueStore,
    Stored,
)
from loom.bus.protocol import RoleBus, RouterBus
from loom.bus.publish import ResultSubscription, Sender
from loom.bus.pull import Delivery, Verdict, check_pull_sizes
from loom.bus.streams import StoredMessage
from loom.messages import DeadLetter
from loom.settings import DEFAULT_PUBLISH_TIMEOUT
from loom.state_store import KeyValueStore
from loom.subjects import (
    ADVISORY_CONSUMER,
    AUDIT_PREFIX,
    DEFAULT_TENANT,
    RESULTS_PREFIX,
    ROUTER_CONSUMER,
    STREAM_ADVISORIES,
    STREAM_AUDIT,
    STREAM_DEAD_LETTER,
    STREAM_GOALS,
    STREAM_INCOMING,
    STREAM_TASKS,
    check_publish_subject,
    goal_consumer,
    goal_filters,
    result_subject,
    task_subject,
    worker_consumer,
)

log = logging.getLogger(__name__)


class MemoryDelivery(Delivery):
    """A message of the twin's stream handed to a handler; verdicts go to its consumer."""

    __slots__ = ("_consumer", "_deliveries", "_seq")

    def __init__(self, consumer: Consumer, msg: Stored, deliveries: int):
        super().__init__(msg.subject, msg.data, dict(msg.headers) or None)
        self._consumer, self._seq, self._deliveries = consumer, msg.seq, deliveries

    @property
    def num_delivered(self) -> int:
        return self._deliveries

    @property
    def stream_seq(self) -> int:
        return self._seq

    async def _send(self, verdict: Verdict, delay: float | None) -> None:
        self._consumer.settle(self._seq, self._deliveries, verdict, delay)


class MemoryBus(Sender):
    """One connection to a :class:`MemoryBroker` (a new broker when none is given)."""

    def __init__(self, broker: MemoryBroker | None = None):
        self.broker = broker or MemoryBroker()
        self.epoch = 0
        self.timeout = DEFAULT_PUBLISH_TIMEOUT
        self.closed = False
        self._subs: set[CoreSub] = set()
        self._audit: AuditWriter | None = None

    @property
    def is_connected(self) -> bool:
        return not self.closed

    @property
    def audit(self) -> AuditWriter:
        """This connection's audit writer (the real one, storing into the twin's audit stream)."""
        if self._audit is None:
            self._audit = AuditWriter(self)
        return self._audit

    async def close(self) -> None:
        """Flush the audit writer, drop this connection's subscriptions."""
        if self._audit is not None:
            await self._audit.close()
        for sub in list(self._subs):
            await sub.unsubscribe()
        self.closed = True

    def _check_open(self) -> None:
        if self.closed:
            raise BusError("the in-memory bus is closed")

    # -- consumers ----------------------------------------------------------------------------------

    async def ensure_worker_consumer(
        self, worker_type: str, tier: str, *, ack_wait: float, max_deliver: int, max_ack_pending: int
    ) -> str:
        config = ConsumerConfig((task_subject(worker_type, tier),), ack_wait, max_deliver, max_ack_pending)
        return self.broker.consumer(STREAM_TASKS, worker_consumer(worker_type, tier), config)

    async def ensure_goal_consumer(
        self, pipeline: str | None, *, ack_wait: float, max_deliver: int, max_ack_pending: int
    ) -> str:
        config = ConsumerConfig(tuple(goal_filters(pipeline)), ack_wait, max_deliver, max_ack_pending)
        return self.broker.consumer(STREAM_GOALS, goal_consumer(pipeline), config)

    async def ensure_router_consumer(self, *, ack_wait: float, max_deliver: int, max_ack_pending: int) -> str:
        config = ConsumerConfig((), ack_wait, max_deliver, max_ack_pending)
        return self.broker.consumer(STREAM_INCOMING, ROUTER_CONSUMER, config)

    async def ensure_advisory_consumer(self) -> str:
        config = ConsumerConfig((), 30.0, -1, 64)
        return self.broker.consumer(STREAM_ADVISORIES, ADVISORY_CONSUMER, config)

    async def ensure_streams(self, limits: StreamLimits | None = None) -> None:
        """The twin's streams exist from its start; their limits are not modelled."""
        self._check_open()

    async def consumer_info(self, stream: str, durable: str) -> ConsumerLag:
        return self.broker.find(stream, durable).lag()

    async def consumer_filters(self, stream: str) -> dict[str, str]:
        return first_filters(self.broker.filters(stream))

    async def subjects_without_consumer(self, stream: str, pattern: str) -> dict[str, int]:
        stored = Counter(m.subject for m in self.broker.messages(stream, pattern))
        return uncovered(stored, self.broker.filters(stream))

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
    ) -> None:
        """The pull loop's contract on the twin: at most ``max_in_flight`` handlers at once; after
        ``stop`` running handlers get ``drain_grace`` seconds, then are cancelled and nak'ed.
        Nothing is held ``ahead``: with no round trip a free slot takes the next message at once."""
        check_pull_sizes(max_in_flight, batch, ahead)
        self._check_open()
        await _MemoryPull(self.broker.find(stream, durable), handler, max_in_flight).run(
            stop, drain_grace, on_bound
        )

    # -- publishing ---------------------------------------------------------------------------------

    async def js_publish(
        self, subject: str, data: bytes, *, msg_id: str | None = None, headers: dict[str, str] | None = None
    ) -> int:
        return (await self._store(subject, data, msg_id, headers))[0]

    async def js_publish_once(self, subject: str, data: bytes, *, msg_id: str) -> bool:
        return not (await self._store(subject, data, msg_id, None))[1]

    async def _store(
        self, subject: str, data: bytes, msg_id: str | None, headers: dict[str, str] | None
    ) -> tuple[int, bool]:
        self._check_open()
        check_publish_subject(subject)
        headers = tracing.inject(headers) or {}
        headers = {**headers, "Nats-Msg-Id": msg_id or headers.get("Nats-Msg-Id") or uuid.uuid4().hex}
        await asyncio.sleep(0)  # a publish yields to the loop, as a network round trip would
        return self.broker.store(subject, data, headers)

    async def _core_publish(self, subject: str, data: bytes, headers: dict[str, str] | None) -> None:
        self._check_open()
        self.broker.send(subject, data)
        await asyncio.sleep(0)

    async def subscribe_results(self, key: str, tenant: str = DEFAULT_TENANT) -> ResultSubscription:
        self._check_open()
        rs = ResultSubscription()
        rs._sub = CoreSub(self.broker, result_subject(key, tenant), rs.deliver, self._subs)
        return rs

    async def subscribe_all_results(self, cb: Callable[[bytes], None]) -> CoreSub:
        self._check_open()
        return CoreSub(self.broker, f"{RESULTS_PREFIX}.>", cb, self._subs)

    # -- what is stored -----------------------------------------------------------------------------

    async def stream_messages(self, stream: str) -> int:
        s = self.broker.streams.get(stream)
        if s is None:
            raise BusError(f"stream {stream}: stream not found")
        return len(s.messages)

    async def next_stored(self, stream: str, subject: str, from_seq: int) -> StoredMessage | None:
        later = (m for m in self.broker.messages(stream, subject) if m.seq >= from_seq)
        return next((_stored(stream, m) for m in later), None)

    async def get_stream_message(self, stream: str, seq: int) -> StoredMessage | None:
        m = self.broker.stream(stream).messages.get(seq)
        return None if m is None else _stored(stream, m)

    async def delete_stream_message(self, stream: str, seq: int) -> bool:
        return self.broker.delete(stream, seq)

    async def dead_letters(self) -> list[StoredDeadLetter]:
        out: list[StoredDeadLetter] = []
        for m in self.broker.messages(STREAM_DEAD_LETTER, ">"):
            try:
                out.append(StoredDeadLetter(m.seq, DeadLetter.from_bytes(m.data)))
            except ValueError as exc:  # as the real bus: one unreadable entry does not hide the rest
                log.warning("dead letter #%d is unreadable: %s", m.seq, exc)
        return out

    async def ensure_audit_stream(self, max_age: float, set_age: bool) -> None:
        self.broker.declare(STREAM_AUDIT, [f"{AUDIT_PREFIX}.>"], work_queue=False)

    async def audit_records(self, tenant: str | None = None) -> list[AuditRecord]:
        pattern = f"{AUDIT_PREFIX}.{tenant}" if tenant else f"{AUDIT_PREFIX}.>"
        out: list[AuditRecord] = []
        for m in self.broker.messages(STREAM_AUDIT, pattern):
            try:
                out.extend(unpack(m.data))
            except ValueError as exc:
                log.warning("audit message #%d is unreadable: %s", m.seq, exc)
        return out

    def key_value_store(self, bucket: str, *, ttl: float | None = None) -> KeyValueStore:
        return MemoryKeyValueStore(self.broker.bucket(bucket, ttl), self.broker.clock)

    async def key_value(self, bucket: str, *, ttl: float | None = None) -> MemoryKeyValue:
        self._check_open()
        return MemoryKeyValue(self.broker.bucket(bucket, ttl), self.broker.clock)

    if not TYPE_CHECKING:  # for mypy the twin has exactly the methods written above

        def __getattr__(self, name: str) -> Any:
            from loom.bus.core import Bus

            if not name.startswith("_") and hasattr(Bus, name):
                raise NotImplementedError(
                    f"MemoryBus does not implement Bus.{name}: the in-memory bus covers what the "
                    "router, worker, pipeline and orchestrator roles use (loom.bus.protocol.RouterBus); "
                    "test this on a real nats-server"
                )
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


class _MemoryPull:
    """Hands a consumer's messages to handlers, at most ``max_in_flight`` at once."""

    def __init__(
        self, consumer: Consumer, handler: Callable[[Delivery], Awaitable[None]], max_in_flight: int
    ):
        self.consumer = consumer
        self.handler = handler
        self.max_in_flight = max_in_flight
        self.where = f"{consumer.stream.name}/{consumer.name}"
        self.tasks: set[asyncio.Task[None]] = set()
        self.wake = asyncio.Event()

    async def run(self, stop: asyncio.Event, drain_grace: float, on_bound: Callable[[], None] | None) -> None:
        self.consumer.waiters.add(self.wake)
        stop_wait = asyncio.ensure_future(stop.wait())
        try:
            if on_bound:
                on_bound()
            while not stop.is_set():
                self.wake.clear()
                now = self.consumer.clock()
                for msg, n in self.consumer.take(self.max_in_flight - len(self.tasks), now):
                    task = asyncio.get_running_loop().create_task(
                        self._run(MemoryDelivery(self.consumer, msg, n))
                    )
                    self.tasks.add(task)
                # With every slot taken only a finished handler (which wakes the loop) frees one.
                full = len(self.tasks) >= self.max_in_flight
                wake_wait = asyncio.ensure_future(self.wake.wait())
                await asyncio.wait(
                    {wake_wait, stop_wait},
                    timeout=None if full else self.consumer.next_due(now),
                    return_when="FIRST_COMPLETED",
                )
                wake_wait.cancel()
        finally:
            stop_wait.cancel()
            self.consumer.waiters.discard(self.wake)
            await self._drain(drain_grace)

    async def _run(self, d: Delivery) -> None:
        try:
            await self.handler(d)
        except asyncio.CancelledError:
            await d.nak()
            raise
        except Exception:
            log.exception("%s: handler failed; message will be redelivered", self.where)
            await d.nak(delay=1.0)
        finally:
            task = asyncio.current_task()
            if task is not None:
                self.tasks.discard(task)
            self.wake.set()

    async def _drain(self, grace: float) -> None:
        if not self.tasks:
            return
        _, pending = await asyncio.wait(set(self.tasks), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            with contextlib.suppress(Exception):
                await asyncio.gather(*pending, return_exceptions=True)
            log.warning("%s: %d tasks released unfinished after %.0fs", self.where, len(pending), grace)


def _stored(stream: str, m: Stored) -> StoredMessage:
    return StoredMessage(stream, m.seq, m.subject, m.data, dict(m.headers), m.stored_at)


if TYPE_CHECKING:
    #: mypy checks here that the twin provides the whole role and router API.
    _ROLE_BUS: type[RoleBus] = MemoryBus
    _ROUTER_BUS: type[RouterBus] = MemoryBus
