"""The server side of the in-memory bus: streams, durable consumers, core subscriptions and
Key-Value buckets, shared by every :class:`~loom.bus.memory.MemoryBus` connected to one broker."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from nats.js import api as js_api
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from loom.bus.connection import BusError
from loom.bus.consumers import ConsumerLag
from loom.bus.pull import Verdict
from loom.bus.streams import DUPLICATE_WINDOW, MAX_DELIVERIES_ADVISORY, _stream_configs
from loom.clock import Clock
from loom.state_store import KeyValueStore
from loom.subjects import subject_matches

#: Longest wait of a pull loop between looks at its consumer (timed redeliveries are due by then).
_IDLE = 0.5


@dataclass
class Stored:
    """A message in a stream of the twin."""

    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]
    stored_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass
class Stream:
    """A stream of the twin: the subjects it stores, and whether acknowledging removes a message."""

    name: str
    subjects: list[str]
    work_queue: bool
    messages: dict[int, Stored] = field(default_factory=dict)
    last_seq: int = 0
    #: Nats-Msg-Id -> (when stored, sequence), for the duplicate window.
    ids: dict[str, tuple[float, int]] = field(default_factory=dict)

    def covers(self, subject: str) -> bool:
        return any(subject_matches(p, subject) for p in self.subjects)


@dataclass
class _Track:
    """One message as one consumer sees it."""

    deliveries: int = 0
    #: Unsettled delivery's ack deadline (None: not out with a handler).
    deadline: float | None = None
    #: Not to be delivered before (a nak's delay).
    due: float = 0.0
    done: bool = False
    #: Its MAX_DELIVERIES advisory was sent.
    advised: bool = False


@dataclass(frozen=True)
class ConsumerConfig:
    """The delivery settings of a durable consumer, as the roles declare them."""

    filters: tuple[str, ...]
    ack_wait: float
    max_deliver: int
    max_ack_pending: int


class Consumer:
    """A durable pull consumer: which messages of its stream it delivers, and when again; when one is
    due again after its last allowed delivery, ``exhausted`` is told once (the server's
    MAX_DELIVERIES advisory)."""

    def __init__(
        self,
        stream: Stream,
        name: str,
        config: ConsumerConfig,
        clock: Clock,
        exhausted: Callable[[Consumer, Stored, int], None] = lambda c, m, n: None,
    ):
        self.stream = stream
        self.name = name
        self.config = config
        self.clock = clock
        self.exhausted = exhausted
        self.tracks: dict[int, _Track] = {}
        self.waiters: set[asyncio.Event] = set()

    @property
    def ack_wait(self) -> float:
        return self.config.ack_wait

    @property
    def max_deliver(self) -> int:
        return self.config.max_deliver

    def wants(self, subject: str) -> bool:
        filters = self.config.filters
        return not filters or any(subject_matches(f, subject) for f in filters)

    def notify(self) -> None:
        for event in self.waiters:
            event.set()

    def _due(self, t: _Track, now: float) -> bool:
        if t.deadline is not None:
            return now >= t.deadline  # ack wait expired: JetStream hands it out again
        return now >= t.due

    def _spent(self, t: _Track) -> bool:
        return self.max_deliver > 0 and t.deliveries >= self.max_deliver

    def _deliverable(self, seq: int, now: float) -> bool:
        t = self.tracks.get(seq)
        if t is None:
            return True
        return not t.done and not self._spent(t) and self._due(t, now)

    def take(self, n: int, now: float) -> list[tuple[Stored, int]]:
        """Up to ``n`` messages to hand out now, oldest first, each with its delivery count; never
        more unsettled than ``max_ack_pending``, as JetStream holds back the rest."""
        for seq, t in list(self.tracks.items()):
            if not t.done and not t.advised and self._spent(t) and self._due(t, now):
                t.advised, t.deadline = True, None
                self.exhausted(self, self.stream.messages[seq], t.deliveries)
        unsettled = sum(1 for t in self.tracks.values() if t.deadline is not None and now < t.deadline)
        n = min(n, self.config.max_ack_pending - unsettled)
        out: list[tuple[Stored, int]] = []
        for seq in sorted(self.stream.messages):
            if len(out) >= n:
                break
            msg = self.stream.messages[seq]
            if not self.wants(msg.subject) or not self._deliverable(seq, now):
                continue
            t = self.tracks.setdefault(seq, _Track())
            t.deliveries += 1
            t.deadline = now + self.ack_wait
            out.append((msg, t.deliveries))
        return out

    def next_due(self, now: float) -> float:
        """Seconds until a held-back message may go out again (capped at :data:`_IDLE`). One due
        already but held back by ``max_ack_pending`` waits for a settle (which wakes the loop), so
        the loop does not spin."""
        times = [
            t.deadline if t.deadline is not None else t.due
            for t in self.tracks.values()
            if not t.done and (not self._spent(t) or not t.advised)
        ]
        return min([_IDLE, *(x - now for x in times if x > now)])

    def settle(self, seq: int, deliveries: int, verdict: Verdict, delay: float | None) -> None:
        t = self.tracks.get(seq)
        if t is None or t.done:
            return
        now = self.clock()
        if verdict == "progress":
            if t.deliveries == deliveries and t.deadline is not None:
                t.deadline = now + self.ack_wait
            return
        if verdict == "nak":
            if t.deliveries == deliveries:
                t.deadline, t.due = None, now + (delay or 0.0)
        else:  # ack or term: done with it for good
            t.done, t.deadline = True, None
            if self.stream.work_queue:
                self.stream.messages.pop(seq, None)
                del self.tracks[seq]
        self.notify()

    def lag(self) -> ConsumerLag:
        """Never delivered; delivered and unsettled (a last delivery only until its ack wait ends)."""
        now = self.clock()
        pending = ack_pending = redelivered = 0
        for seq, msg in self.stream.messages.items():
            if not self.wants(msg.subject):
                continue
            t = self.tracks.get(seq)
            if t is None or t.deliveries == 0:
                pending += 1
            elif not t.done and (
                (t.deadline is not None and now < t.deadline)
                or self.max_deliver <= 0
                or t.deliveries < self.max_deliver
            ):
                ack_pending += 1
                redelivered += t.deliveries > 1
        return ConsumerLag(pending, ack_pending, redelivered)


class CoreSub:
    """A core subscription of one connection (``owner``: that connection's subscriptions)."""

    def __init__(
        self, broker: MemoryBroker, pattern: str, deliver: Callable[[bytes], None], owner: set[CoreSub]
    ):
        self.broker, self.pattern, self.deliver, self.owner = broker, pattern, deliver, owner
        broker.subs.add(self)
        owner.add(self)

    async def unsubscribe(self) -> None:
        self.broker.subs.discard(self)
        self.owner.discard(self)


class MemoryBroker:
    """The server of the twin: Loom's streams (declared as the real bus declares them), durable
    consumers, core subscriptions and Key-Value buckets, shared by every MemoryBus on it.

    ``clock`` (monotonic seconds) times ack waits, nak delays, the duplicate window and bucket
    expiry. A test may drive it by hand so that none of these is waited out for real: after moving
    it, :meth:`tick` has every pull loop look again."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.streams: dict[str, Stream] = {}
        for c in _stream_configs():
            self.declare(
                str(c.name), list(c.subjects or []), c.retention == js_api.RetentionPolicy.WORK_QUEUE
            )
        self.consumers: dict[tuple[str, str], Consumer] = {}
        self.subs: set[CoreSub] = set()
        self.buckets: dict[str, Bucket] = {}

    def tick(self) -> None:
        """Wake every pull loop to hand out what the clock made due (its ack wait or nak delay)."""
        for c in self.consumers.values():
            c.notify()

    def declare(self, name: str, subjects: list[str], work_queue: bool) -> None:
        """A stream, unless it exists (its stored messages stay)."""
        self.streams.setdefault(name, Stream(name, subjects, work_queue))

    def store(self, subject: str, data: bytes, headers: dict[str, str]) -> tuple[int, bool]:
        """Store into the stream covering ``subject``: (sequence, whether it was a duplicate)."""
        stream = next((s for s in self.streams.values() if s.covers(subject)), None)
        if stream is None:
            raise BusError(f"publish to {subject!r} not stored: no stream stores it")
        now = self.clock()
        stream.ids = {k: v for k, v in stream.ids.items() if now - v[0] < DUPLICATE_WINDOW}
        msg_id = headers.get("Nats-Msg-Id")
        if msg_id and msg_id in stream.ids:
            return stream.ids[msg_id][1], True
        stream.last_seq += 1
        stream.messages[stream.last_seq] = Stored(stream.last_seq, subject, data, headers)
        if msg_id:
            stream.ids[msg_id] = (now, stream.last_seq)
        for c in self.consumers.values():
            if c.stream is stream and c.wants(subject):
                c.notify()
        return stream.last_seq, False

    def consumer(self, stream: str, name: str, config: ConsumerConfig) -> str:
        """Create or update a durable consumer (its delivery state is kept)."""
        key = (stream, name)
        if key in self.consumers:
            self.consumers[key].config = config
        else:
            self.consumers[key] = Consumer(self.streams[stream], name, config, self.clock, self._advise)
        return name

    def _advise(self, consumer: Consumer, msg: Stored, deliveries: int) -> None:
        """The server's MAX_DELIVERIES advisory, stored where the advisories stream captures it."""
        stream = consumer.stream.name
        subject = f"{MAX_DELIVERIES_ADVISORY}.{stream}.{consumer.name}"
        if not any(s.covers(subject) for s in self.streams.values()):
            return  # sent, and captured by no stream
        body = {
            "type": "io.nats.jetstream.advisory.v1.max_deliver",
            "id": uuid.uuid4().hex,
            "timestamp": datetime.now(UTC).isoformat(),
            "stream": stream,
            "consumer": consumer.name,
            "stream_seq": msg.seq,
            "deliveries": deliveries,
        }
        self.store(subject, json.dumps(body).encode(), {})

    def find(self, stream: str, durable: str) -> Consumer:
        try:
            return self.consumers[(stream, durable)]
        except KeyError:
            raise BusError(f"consumer {durable} on {stream}: consumer not found") from None

    def send(self, subject: str, data: bytes) -> None:
        """Core publish: to the subscribers of the moment, nothing stored."""
        for sub in list(self.subs):
            if subject_matches(sub.pattern, subject):
                sub.deliver(data)

    def bucket(self, name: str, ttl: float | None) -> Bucket:
        """A Key-Value bucket, created if missing (the first creator's ttl wins, as on the server)."""
        return self.buckets.setdefault(name, Bucket(name, ttl))

    def stream(self, name: str) -> Stream:
        try:
            return self.streams[name]
        except KeyError:
            raise BusError(f"stream {name}: stream not found") from None

    def filters(self, stream: str) -> dict[str, tuple[str, ...]]:
        """Durable consumer name -> its filter subjects (empty: the whole stream)."""
        return {name: c.config.filters for (s, name), c in self.consumers.items() if s == stream}

    def delete(self, stream: str, seq: int) -> bool:
        """Remove a stored message (and every consumer's view of it); False when it was gone."""
        if self.stream(stream).messages.pop(seq, None) is None:
            return False
        for c in self.consumers.values():
            if c.stream.name == stream:
                c.tracks.pop(seq, None)
        return True

    def messages(self, stream: str, pattern: str) -> list[Stored]:
        s = self.streams.get(stream)
        return (
            []
            if s is None
            else [m for _, m in sorted(s.messages.items()) if subject_matches(pattern, m.subject)]
        )


@dataclass
class Bucket:
    """A Key-Value bucket of the twin: per key its value, revision and expiry time (None: never).
    Revisions count up across the bucket, as the sequences of the stream behind a real bucket do."""

    name: str
    ttl: float | None
    entries: dict[str, tuple[bytes, int, float | None]] = field(default_factory=dict)
    seq: int = 0

    def read(self, key: str, now: float) -> tuple[bytes, int] | None:
        entry = self.entries.get(key)
        if entry is None or (entry[2] is not None and now >= entry[2]):
            return None
        return entry[0], entry[1]

    def write(self, key: str, value: bytes, now: float) -> int:
        self.seq += 1
        self.entries[key] = (value, self.seq, None if self.ttl is None else now + self.ttl)
        return self.seq


class MemoryKeyValueStore(KeyValueStore):
    """A bucket of the twin behind the state-store interface (pipelines, checkpoints)."""

    def __init__(self, bucket: Bucket, clock: Clock):
        self._bucket, self._clock = bucket, clock

    async def get(self, key: str) -> bytes | None:
        found = self._bucket.read(key, self._clock())
        return None if found is None else found[0]

    async def put(self, key: str, value: bytes) -> None:
        self._bucket.write(key, value, self._clock())

    async def delete(self, key: str) -> None:
        self._bucket.entries.pop(key, None)


class MemoryKeyValue:
    """A bucket of the twin as the handle :meth:`Bus.key_value` returns (what the router's limits and
    budgets use through :func:`~loom.bus.kv.kv_read`, ``kv_swap`` and ``kv_put``): the same entries
    and the same errors as a JetStream bucket, compare-and-set on the key's revision included."""

    def __init__(self, bucket: Bucket, clock: Clock):
        self._bucket, self._clock = bucket, clock

    async def get(self, key: str) -> KeyValue.Entry:
        found = self._bucket.read(key, self._clock())
        if found is None:
            raise KeyNotFoundError
        return KeyValue.Entry(self._bucket.name, key, found[0], found[1], None, None, None)

    async def put(self, key: str, value: bytes) -> int:
        return self._bucket.write(key, value, self._clock())

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        found = self._bucket.read(key, self._clock())
        if (found[1] if found is not None else 0) != (last or 0):
            raise KeyWrongLastSequenceError(description=f"wrong last sequence: {found and found[1]}")
        return self._bucket.write(key, value, self._clock())

    async def purge(self, key: str) -> bool:
        self._bucket.entries.pop(key, None)
        return True
