"""The NATS server's user list, kept in step with the resources the operator serves.

Only in ``generated`` mode with an authorization Secret (``LOOM_NATS_AUTH_SECRET``). The list
comes from reading every Loom kind from the API server (not from Kopf's indices, which fill
after start-up: writing a partial list would make the server drop the users it lost and
disconnect their pods). A resource whose spec no longer validates keeps the identity it had
last, so its running pods stay connected while someone fixes the spec. The Secret is written
once at start-up, shortly after any resource changes, and on every resync; only a changed list
is written.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable

from loom.api.common import GROUP_VERSION
from loom.api.kinds import KIND_NAMES
from loom.bus_auth import Identity
from loom_operator.dispatch import Stalled, parse_body
from loom_operator.k8s import Kube, KubeError
from loom_operator.render.bus_auth import identity, server_secrets
from loom_operator.render.common import Owner
from loom_operator.settings import Settings

log = logging.getLogger(__name__)


class BusUsers:
    """Writes the authorization Secret (and the admin's and tenants' credential Secrets)."""

    def __init__(self, kube: Kube, settings: Settings):
        self.kube = kube
        self.settings = settings
        #: The last identity of each resource (kind, namespace, name), kept through invalid edits.
        self.identities: dict[tuple[str, str, str], Identity] = {}
        self._written: str | None = None
        self._changed = asyncio.Event()

    @property
    def enabled(self) -> bool:
        return self.settings.nats_auth == "generated" and self.settings.nats_auth_secret is not None

    async def collect(self) -> list[Identity]:
        """Every resource's identity, read from the API server. Raises KubeError when a list fails."""
        namespaces: list[str | None] = list(self.settings.watch_namespaces) or [None]
        seen: dict[tuple[str, str, str], Identity] = {}
        for kind in KIND_NAMES:
            for ns in namespaces:
                for body in await self.kube.list(GROUP_VERSION, kind, ns):
                    meta = body["metadata"]
                    key = (kind, meta["namespace"], meta["name"])
                    try:
                        spec = parse_body(body).spec
                    except Stalled:
                        if key in self.identities:
                            seen[key] = self.identities[key]
                        continue
                    seen[key] = identity(Owner.from_body(body), spec)
        self.identities = seen
        return [seen[k] for k in sorted(seen)]

    async def sync(self) -> bool:
        """Write the Secrets when the user list changed; True when written."""
        if not self.enabled:
            return False
        objects = server_secrets(await self.collect(), self.settings)
        digest = hashlib.sha256(json.dumps(objects, sort_keys=True).encode()).hexdigest()
        if digest == self._written:
            return False
        for obj in objects:
            await self.kube.apply(obj)
        self._written = digest
        log.info(
            "NATS users of %d resources written to %s", len(self.identities), self.settings.nats_auth_secret
        )
        return True

    def changed(self) -> None:
        """A resource was added, changed or removed: sync soon."""
        self._changed.set()

    async def run_forever(
        self,
        interval: float,
        *,
        active: Callable[[], Awaitable[bool]] | None = None,
        debounce: float = 0.5,
        retry: float = 5.0,
    ) -> None:
        """Sync now, then on every change (coalesced over ``debounce`` s) and every ``interval`` s.

        The periodic pass writes even an unchanged list: it repairs a hand-edited Secret.
        """
        force = True
        while True:
            self._changed.clear()
            wait: float = interval
            if force:
                self._written = None
            if active is None or await active():
                try:
                    await self.sync()
                except KubeError as exc:
                    log.warning("cannot write the NATS users (%s); retrying in %gs", exc, retry)
                    wait = retry
            try:
                await asyncio.wait_for(self._changed.wait(), wait)
                await asyncio.sleep(debounce)
                force = False
            except TimeoutError:
                force = True
