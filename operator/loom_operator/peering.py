"""Hot standby: whether this replica is the one Kopf lets work.

With ``--peering``, Kopf pauses its watch streams, and so its handlers, while a live peer of
higher or equal priority keeps alive in the peering object. The operator's own loops (the
periodic resync, the built-in scaler, schedule times) run beside Kopf and must pause too.
Kopf gives handlers no pause signal, so those loops read the peering object and apply
Kopf's rule to it.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from loom_operator.k8s import Kube, KubeError

log = logging.getLogger(__name__)

PEERING_API = "kopf.dev/v1"
#: Kopf's lifetime for peers that state none.
DEFAULT_LIFETIME = 60


def own_identity() -> str:
    """This replica's key in the peering object: ``POD_ID`` when set (as Kopf does), else host/pid/random."""
    return os.environ.get("POD_ID") or f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"


def blocking_peers(status: Mapping[str, Any], identity: str, priority: int, now: datetime) -> list[str]:
    """Live peers (other than ``identity``) whose priority is >= ``priority``: Kopf pauses for them."""
    blockers = []
    for peer, info in status.items():
        if peer == identity or not isinstance(info, Mapping):
            continue
        lastseen = info.get("lastseen")
        seen = datetime.fromisoformat(lastseen) if lastseen else now
        if seen.tzinfo is None:
            seen = seen.replace(tzinfo=UTC)
        if seen + timedelta(seconds=int(info.get("lifetime", DEFAULT_LIFETIME))) <= now:
            continue  # expired: Kopf ignores it (and removes it)
        if int(info.get("priority", 0)) >= priority:
            blockers.append(peer)
    return sorted(blockers)


@dataclass
class Standby:
    """The peering this replica takes part in; ``active()`` answers before each background pass."""

    kube: Kube
    name: str
    identity: str
    priority: int
    #: Watched namespaces (a KopfPeering in each); empty = the cluster-wide ClusterKopfPeering.
    namespaces: tuple[str, ...] = ()
    _last: bool | None = field(default=None, repr=False)

    async def blockers(self) -> list[str]:
        """Why this replica must wait (peers, or a missing peering object); empty when active."""
        out: list[str] = []
        now = datetime.now(UTC)
        for ns in self.namespaces or (None,):
            kind = "KopfPeering" if ns else "ClusterKopfPeering"
            body = await self.kube.get(PEERING_API, kind, ns, self.name)
            if body is None:  # Kopf stays paused without its peering object too
                out.append(f"{kind} {self.name!r}{f' in {ns}' if ns else ''} does not exist")
                continue
            out += blocking_peers(body.get("status") or {}, self.identity, self.priority, now)
        return out

    async def active(self) -> bool:
        try:
            blockers = await self.blockers()
        except KubeError as exc:
            log.warning("standby: cannot read peering %r (%s); pausing background work", self.name, exc)
            return False
        active = not blockers
        if active != self._last:
            if active:
                log.info("standby: active in peering %r (priority %d)", self.name, self.priority)
            else:
                log.info("standby: paused in peering %r for %s", self.name, ", ".join(blockers))
            self._last = active
        return active
