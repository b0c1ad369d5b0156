"""``/metrics``, ``/healthz`` (liveness) and ``/readyz`` (readiness) for every long-running role.

Liveness answers while the event loop runs and ``live()`` names no reason to
restart (a NATS connection lost past its grace period, or closed for good).
Readiness asks the role (NATS connected, consumer bound); a role that is draining
reports not ready so no new work is sent its way.

The port listens on every interface in a pod and on loopback only in local mode
(:func:`loom.settings.bind_host`), so ``loom up`` on a laptop exposes nothing to its network.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from loom.metrics import negotiated_exposition
from loom.settings import bind_host

log = logging.getLogger(__name__)


class HealthServer:
    """A small aiohttp server; ``port`` 0 picks a free port (see :attr:`port` after start), -1 is off.

    ``host`` defaults to :func:`loom.settings.bind_host` (loopback in local mode).
    """

    def __init__(
        self,
        port: int,
        ready: Callable[[], bool],
        host: str | None = None,
        live: Callable[[], str | None] | None = None,
    ):
        self.requested_port = port
        self.host = bind_host() if host is None else host
        self.ready = ready
        self.live = live
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Start serving (no-op when the port is -1)."""
        if self.requested_port < 0:
            return
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.requested_port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.requested_port
        log.info("metrics and health on %s:%s", self.host, self.port)

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        body, content_type = negotiated_exposition(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _healthz(self, _: web.Request) -> web.Response:
        problem = self.live() if self.live is not None else None
        if problem is not None:
            return web.Response(status=503, text=f"unhealthy: {problem}\n")
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        if self.ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")
