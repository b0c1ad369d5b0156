"""RouterPolicy status: each limit's and budget's use in its current window, read from NATS.

Every ``LOOM_USAGE_INTERVAL`` seconds the operator reads, for every valid RouterPolicy it serves,
the counters the routers share (:func:`loom.router.usage.read_usage`: the Key-Value buckets of the
shared limits and the budgets) and merge-patches ``status.usage`` and ``status.usageTime``. The rows
are bounded by the spec (one per declared limit and budget), never by traffic. The operator connects
with its own NATS settings (``LOOM_NATS_URL`` and, where the bus needs them, ``LOOM_NATS_CREDS`` or
user and password); while it cannot connect, the status keeps its last reading and a warning is logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Any

from loom.api.common import GROUP_VERSION
from loom.api.status import LimitUse
from loom.bus import Bus
from loom.router.shared_limits import limits_mode
from loom.router.usage import read_usage
from loom.settings import NatsSettings
from loom_operator.dispatch import PolicyEntry
from loom_operator.k8s import Kube

log = logging.getLogger(__name__)


class RouterUsage:
    """Writes ``status.usage`` of the RouterPolicies in ``policies`` (namespace -> entries)."""

    def __init__(
        self,
        kube: Kube,
        policies: Mapping[Any, Collection[PolicyEntry]],
        nats: NatsSettings,
        *,
        interval: float,
        active: Callable[[], Awaitable[bool]] | None = None,
    ):
        self.kube = kube
        self.policies = policies
        self.nats = nats
        self.interval = interval
        self.active = active
        self._bus: Bus | None = None
        self._last_error = ""

    async def aclose(self) -> None:
        if self._bus is not None:
            await self._bus.close()
            self._bus = None

    async def run_forever(self) -> None:
        while True:
            if self.active is None or await self.active():
                try:
                    await self.tick()
                    self._last_error = ""
                except Exception as exc:  # NATS or the API server away: the next round tries again
                    if str(exc) != self._last_error:  # once per distinct failure, not every round
                        log.warning("router usage: cannot read or write it: %s", exc)
                    self._last_error = str(exc)
                    await self.aclose()
            await asyncio.sleep(self.interval)

    async def tick(self) -> int:
        """Read and write the usage of every valid RouterPolicy; returns how many were written."""
        if self._bus is None:
            self._bus = await Bus.connect(self.nats, connect_timeout=10, ensure_streams=False)
        written = 0
        for namespace, entries in list(self.policies.items()):
            for entry in list(entries):
                if entry.spec is None:
                    continue
                shared = limits_mode("auto", entry.spec.replicas) == "shared"
                limits, budgets = await read_usage(self._bus, entry.spec, time.time(), shared=shared)
                rows = [
                    LimitUse(scope=u.scope, what=u.what, window=u.window, used=u.used, limit=u.limit)
                    for u in [*limits, *budgets]
                ]
                status = {
                    "usage": [r.model_dump(by_alias=True, mode="json", exclude_none=True) for r in rows],
                    "usageTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
                if await self.kube.patch_status(GROUP_VERSION, "RouterPolicy", namespace, entry.name, status):
                    written += 1
        return written
