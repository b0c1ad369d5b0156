"""The pull loop: pull requests outstanding for the free slots of a process (``max_in_flight``),
so messages flow as soon as they are stored and a process holds little more than it can work on;
and :class:`Delivery`, one message handed to a handler."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Literal

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from loom.bus.connection import BusBase, BusError

log = logging.getLogger(__name__)

_PULL_EXPIRES = 30.0
_PULL_HEARTBEAT = 5.0
#: A message that waited this long for a slot resets its ack timer when it starts.
_AHEAD_STALE = 1.0
_ACK = b"+ACK"
_NAK = b"-NAK"
_TERM = b"+TERM"
_WPI = b"+WPI"


Verdict = Literal["ack", "nak", "term", "progress"]


class Delivery(ABC):
    """One stream message handed to a handler. Settle it exactly once: ack, nak or term.

    The settling rules live here; a backend says how a verdict reaches its server
    (:class:`NatsDelivery` for JetStream, the in-memory bus's own for its streams).
    """

    __slots__ = ("data", "headers", "settled", "subject")

    def __init__(self, subject: str, data: bytes, headers: dict[str, str] | None):
        self.data = data
        self.subject = subject
        self.headers = headers
        self.settled = False

    @property
    @abstractmethod
    def num_delivered(self) -> int:
        """How many times this message has been delivered (1 on first delivery)."""

    @property
    @abstractmethod
    def stream_seq(self) -> int:
        """Sequence of the message in its stream."""

    @abstractmethod
    async def _send(self, verdict: Verdict, delay: float | None) -> None:
        """Tell the server ``verdict`` (``delay``: seconds before a nak'ed message comes back)."""

    async def ack(self) -> None:
        """Done: remove from the work queue. Does not wait for the server."""
        if not self.settled:
            self.settled = True
            await self._send("ack", None)

    async def nak(self, delay: float | None = None) -> None:
        """Give it back for redelivery, after ``delay`` seconds if given."""
        if not self.settled:
            self.settled = True
            await self._send("nak", delay)

    async def term(self) -> None:
        """Never redeliver (it has been dead-lettered)."""
        if not self.settled:
            self.settled = True
            await self._send("term", None)

    async def in_progress(self) -> None:
        """Still working on it: reset the ack timer."""
        if not self.settled:
            await self._send("progress", None)


class NatsDelivery(Delivery):
    """A JetStream message: its metadata is in the reply subject, verdicts are published to it."""

    __slots__ = ("_meta", "_nc", "_reply")

    def __init__(self, nc: NATS, msg: Msg):
        super().__init__(msg.subject, msg.data, msg.headers)
        self._nc = nc
        self._reply = msg.reply
        self._meta: tuple[int, int] | None = None

    def _parse(self) -> tuple[int, int]:
        if self._meta is None:
            t = self._reply.split(".")
            if len(t) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
                self._meta = (int(t[4]), int(t[5]))
            elif len(t) >= 11:  # $JS.ACK.<domain>.<acc>.<stream>.<consumer>.<delivered>.<sseq>...
                self._meta = (int(t[6]), int(t[7]))
            else:
                raise BusError(f"not a JetStream delivery (reply {self._reply!r})")
        return self._meta

    @property
    def num_delivered(self) -> int:
        return self._parse()[0]

    @property
    def stream_seq(self) -> int:
        return self._parse()[1]

    async def _send(self, verdict: Verdict, delay: float | None) -> None:
        if verdict == "nak" and delay:
            body = b'-NAK {"delay": %d}' % int(delay * 1e9)
        else:
            body = {"ack": _ACK, "nak": _NAK, "term": _TERM, "progress": _WPI}[verdict]
        await self._nc.publish(self._reply, body)


def slots_ahead(max_in_flight: int, batch: int) -> int:
    """Messages a worker pulls ahead of its free slots: a quarter of ``max_in_flight`` (none below
    4), at most half a batch. With hundreds of calls in flight a finished task's slot is filled at
    once instead of after a pull's round trip through a busy event loop (measured: the 256 slots of
    an LLM worker held 238-246 tasks on average without it); with a handful in flight there is
    nothing to win, and every message held ahead is one another replica could start.

    Only for handlers bounded by the consumer's ack wait (a worker's ``timeout_seconds`` with its
    grace): a message held ahead then waits at most one such run for a slot, and resets its ack
    timer when it starts. A router's handler may wait for admission far longer, so it holds none.
    """
    return min(max_in_flight // 4, max(1, min(batch, max_in_flight) // 2))


def check_pull_sizes(max_in_flight: int, batch: int, ahead: int) -> None:
    """The pull loop's arguments, checked alike by the real bus and the twin."""
    if max_in_flight < 1 or batch < 1 or ahead < 0:
        raise ValueError("max_in_flight and batch must be >= 1, ahead >= 0")


class _PullLoop:
    """Keeps pull requests outstanding for the free slots and the messages held ahead; accounting by
    the server's status replies."""

    def __init__(
        self,
        bus: BusBase,
        stream: str,
        durable: str,
        handler: Callable[[Delivery], Awaitable[None]],
        max_in_flight: int,
        batch: int,
        ahead: int,
    ):
        check_pull_sizes(max_in_flight, batch, ahead)
        self.bus = bus
        self.nc = bus.nc
        self.handler = handler
        self.max_in_flight = max_in_flight
        self.batch = batch
        self.api = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.where = f"{stream}/{durable}"
        self.requested = 0
        self.in_flight = 0
        self.ahead: collections.deque[tuple[Delivery, float]] = collections.deque()
        self.capacity = max_in_flight + ahead
        self.stopping = False
        self.tasks: dict[asyncio.Task[None], Delivery] = {}
        self.wake = asyncio.Event()
        self.last_activity = time.monotonic()
        self.pause_until = 0.0
        self.epoch = bus.epoch
        self.threshold = max(1, min(batch, max_in_flight) // 2)

    async def run(self, stop: asyncio.Event, drain_grace: float, on_bound: Callable[[], None] | None) -> None:
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox, cb=self._on_msg, pending_msgs_limit=1_000_000)
        self.inbox = inbox
        stop_wait = asyncio.ensure_future(stop.wait())
        try:
            await self._pull()
            if on_bound:
                on_bound()
            while not stop.is_set():
                wake_wait = asyncio.ensure_future(self.wake.wait())
                await asyncio.wait(
                    {wake_wait, stop_wait}, timeout=_PULL_HEARTBEAT, return_when="FIRST_COMPLETED"
                )
                wake_wait.cancel()
                self.wake.clear()
                if stop.is_set():
                    break
                self._check_liveness()
                await self._pull()
        finally:
            stop_wait.cancel()
            self.stopping = True
            with contextlib.suppress(Exception):
                await sub.drain()  # late arrivals still reach _on_msg, which naks them
            await self._drain(drain_grace)

    def _check_liveness(self) -> None:
        now = time.monotonic()
        if self.bus.epoch != self.epoch:
            self.epoch = self.bus.epoch
            self.requested = 0  # pull requests do not survive a reconnect
        elif self.requested and now - self.last_activity > 3 * _PULL_HEARTBEAT:
            log.warning("%s: no heartbeat from the server; re-issuing pull requests", self.where)
            self.requested = 0
            self.last_activity = now

    async def _pull(self) -> None:
        if not self.nc.is_connected or time.monotonic() < self.pause_until:
            return
        free = self.capacity - self.in_flight - len(self.ahead) - self.requested
        if free <= 0 or (self.requested and free < self.threshold):
            return
        n = min(free, self.batch)
        if not self.requested:
            self.last_activity = time.monotonic()
        self.requested += n
        body = b'{"batch":%d,"expires":%d,"idle_heartbeat":%d}' % (
            n,
            int(_PULL_EXPIRES * 1e9),
            int(_PULL_HEARTBEAT * 1e9),
        )
        try:
            await self.nc.publish(self.api, body, reply=self.inbox)
        except Exception as exc:
            self.requested -= n
            log.warning("%s: pull request failed: %s", self.where, exc)

    async def _on_msg(self, msg: Msg) -> None:
        self.last_activity = time.monotonic()
        hdrs = msg.headers
        if hdrs and not msg.data and "Status" in hdrs:
            self._on_status(hdrs)
            return
        if self.requested > 0:
            self.requested -= 1
            if not self.requested:
                self.wake.set()  # every pull answered: top up the slots and the messages held ahead
        d = NatsDelivery(self.nc, msg)
        if self.stopping:
            await d.nak()
            return
        if self.in_flight < self.max_in_flight:
            self._start(d, None)
        else:
            self.ahead.append((d, self.last_activity))

    def _start(self, d: Delivery, since: float | None) -> None:
        self.in_flight += 1
        task = asyncio.get_running_loop().create_task(self._run(d, since))
        self.tasks[task] = d

    def _on_status(self, hdrs: dict[str, str]) -> None:
        status = hdrs.get("Status", "")
        if status == "100":
            return
        pending = hdrs.get("Nats-Pending-Messages")
        if pending is not None:
            self.requested = max(0, self.requested - int(pending))
        elif status in ("404", "408", "409"):
            self.requested = 0
        if status == "409":
            desc = hdrs.get("Description", "")
            if "Consumer Deleted" in desc or "push based" in desc:
                log.error("%s: %s; pausing pulls", self.where, desc)
                self.pause_until = time.monotonic() + 2.0
            elif "Exceeded" in desc:
                log.warning("%s: %s", self.where, desc)
        self.wake.set()

    async def _run(self, d: Delivery, since: float | None) -> None:
        try:
            if since is not None and time.monotonic() - since >= _AHEAD_STALE:
                await d.in_progress()  # the handler gets the whole ack wait, not what is left of it
            await self.handler(d)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await d.nak()
            raise
        except Exception:
            log.exception("%s: handler failed; message will be redelivered", self.where)
            with contextlib.suppress(Exception):
                await d.nak(delay=1.0)
        finally:
            self.in_flight -= 1
            self.tasks.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
            if not self.stopping:
                if self.ahead:
                    self._start(*self.ahead.popleft())
                self.wake.set()

    async def _drain(self, grace: float) -> None:
        while self.ahead:  # never started: back to the stream, for any replica to take at once
            with contextlib.suppress(Exception):
                await self.ahead.popleft()[0].nak()
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
                log.warning("%s: %d tasks released unfinished after %.0fs", self.where, len(pending), grace)
        with contextlib.suppress(Exception):
            await self.nc.flush(timeout=5)
