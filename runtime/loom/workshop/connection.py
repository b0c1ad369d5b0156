"""The Workshop's connection to a running system (``--nats-url``): opened on first use, kept open.

Pages that need a running system (a pipeline run, dead letters) say so when the Workshop was started
without one, instead of failing on a missing connection.
"""

from __future__ import annotations

import asyncio

from loom.bus import Bus
from loom.settings import NatsSettings


class NotConnected(RuntimeError):
    """The Workshop was started without ``--nats-url``."""


class Connection:
    """One Bus for the Workshop process."""

    def __init__(self, settings: NatsSettings | None, connect_timeout: float = 10.0):
        self.settings = settings
        self.connect_timeout = connect_timeout
        self._bus: Bus | None = None
        self._lock = asyncio.Lock()

    @property
    def configured(self) -> bool:
        return self.settings is not None

    async def bus(self) -> Bus:
        if self.settings is None:
            raise NotConnected("this page needs a running system: start the Workshop with --nats-url URL")
        async with self._lock:
            if self._bus is None:
                self._bus = await Bus.connect(self.settings, connect_timeout=self.connect_timeout)
            return self._bus

    async def close(self) -> None:
        if self._bus is not None:
            await self._bus.close()
            self._bus = None
