"""The Bus: one NATS connection with every part of Loom's use of it (see the package docstring)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from loom.audit import AuditWriter
from loom.bus.connection import BusBase, ConnectionState, open_connection
from loom.bus.consumers import ConsumersMixin
from loom.bus.dead_letters import AuditMixin, DeadLettersMixin
from loom.bus.kv import KeyValueMixin
from loom.bus.pull import Delivery, _PullLoop
from loom.settings import NatsSettings

log = logging.getLogger(__name__)


class Bus(DeadLettersMixin, AuditMixin, ConsumersMixin, KeyValueMixin):
    """A NATS connection with Loom's streams, consumers and message helpers."""

    @classmethod
    async def connect(
        cls,
        settings: NatsSettings,
        *,
        ensure_streams: bool = True,
        connect_timeout: float | None = None,
        role: str | None = None,
        retry_refused: bool = False,
    ) -> Bus:
        """Connect (reconnecting forever with backoff) and, by default, declare the streams.

        Long-running roles wait for NATS as long as it takes and pass ``role``: their
        connection state then drives ``loom_nats_connected{role}`` and the liveness probe.
        One-shot commands pass ``connect_timeout`` so a refused certificate or bad
        credentials end them with an error instead of a silent wait; ``retry_refused`` keeps trying
        refused credentials until that timeout (a Job whose identity was created with it).
        """
        holder: list[BusBase] = []
        state = ConnectionState(role)
        nc = await open_connection(settings, state, holder, connect_timeout, retry_refused)
        bus = cls(nc, settings, state)
        holder.append(bus)
        state.up()
        if role:
            cls.open_buses.add(bus)
        if ensure_streams:
            await bus.ensure_streams()
        return bus

    @property
    def audit(self) -> AuditWriter:
        """This connection's audit writer (records go out in the background, see :mod:`loom.audit`)."""
        if self._audit is None:
            self._audit = AuditWriter(self)
        return self._audit

    async def close(self) -> None:
        """Drain subscriptions and pending publishes, then close."""
        Bus.open_buses.discard(self)
        if self._audit is not None and not self.nc.is_closed:
            await self._audit.close()
        self.closing = True
        if self.nc.is_closed:
            return
        try:
            await self.nc.drain()
        except Exception as exc:  # a drain that cannot finish still has to close the socket
            log.warning("drain failed (%s); closing", exc)
            await self.nc.close()

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
        """Pull from a durable consumer; run ``handler`` on each message, at most ``max_in_flight`` at once.

        Returns after ``stop`` is set: no more pulls; messages still arriving are
        nak'ed; running handlers get ``drain_grace`` seconds, then are cancelled and
        their messages nak'ed (redelivered at once to another replica). ``ahead``: messages
        pulled beyond the free slots, each started the moment a slot frees (see
        :func:`~loom.bus.pull.slots_ahead` for when that is safe).
        """
        loop = _PullLoop(self, stream, durable, handler, max_in_flight, batch, ahead)
        await loop.run(stop, drain_grace, on_bound)
