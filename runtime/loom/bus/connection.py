"""The NATS connection: errors, the connection state liveness reads, TLS, connecting, and the base
every part of the Bus builds on (the client, its JetStream context and raw JetStream API requests).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from loom import metrics
from loom.clock import Clock
from loom.settings import NatsSettings

if TYPE_CHECKING:
    from loom.audit import AuditWriter

log = logging.getLogger(__name__)


class BusError(Exception):
    """A JetStream operation failed (publish not stored, stream misconfigured, ...)."""


class BusAuthError(BusError):
    """The server refused the connection's credentials (or the server needs some and none were given)."""


class BusPermissionError(BusError):
    """The server refused a publish: this identity's NATS permissions do not allow the subject."""


#: How the server words a refused publish (an ``-ERR`` it sends, which reaches the error callback).
_PUBLISH_REFUSED = re.compile(r'permissions violation for publish to "([^"]+)"', re.IGNORECASE)


@dataclass(eq=False)
class AckWait:
    """A request waiting for its answer, in ``task``; ``refused`` says why the server refused it (the
    task is then cancelled out of its wait: no answer will come)."""

    task: asyncio.Task[Any] | None
    refused: str | None = None


class ConnectionState:
    """What the client's callbacks say about the connection; liveness and ``loom_nats_connected`` read it.

    nats-py reconnects by itself after a network loss, but when the server closes the
    connection on a protocol error (``-ERR``, e.g. ``maximum control line exceeded``)
    the client closes for good and never reconnects: ``closed`` then holds why.
    """

    def __init__(self, role: str | None, clock: Clock = time.monotonic):
        self.role = role
        self.clock = clock
        self.connected = False
        self.lost_since: float | None = None
        self.closed: str | None = None
        self.last_error = ""
        #: Requests waiting for an answer, by subject in lower case (the client lower-cases the
        #: server's error text, subject included).
        self._acks: dict[str, set[AckWait]] = {}

    def up(self) -> None:
        """Connected or reconnected."""
        self.connected = True
        self.lost_since = None
        self._gauge()

    def down(self) -> None:
        """Disconnected; the client tries to reconnect."""
        self.connected = False
        if self.lost_since is None:
            self.lost_since = self.clock()
        self._gauge()

    def closed_for_good(self, why: str) -> None:
        """The client closed without being asked to: it will not reconnect."""
        self.closed = why
        self.down()

    def error(self, text: str) -> None:
        """An error the server sent. The server never answers a request it refused to take, so a
        refusal ends the waits of the requests to its subject instead of leaving them to their timeout."""
        self.last_error = f"last error: {text}"
        m = _PUBLISH_REFUSED.search(text)
        for wait in list(self._acks.get(m.group(1).lower(), ())) if m else ():
            if wait.refused is None and wait.task is not None:
                wait.refused = text
                wait.task.cancel()  # it waits in its request: BusBase._request turns this into the error

    def watch(self, subject: str) -> AckWait:
        """Registers the current task as waiting for the answer to a request to ``subject`` (see
        :meth:`error`); :meth:`unwatch` when the wait is over."""
        wait = AckWait(asyncio.current_task())
        self._acks.setdefault(subject.lower(), set()).add(wait)
        return wait

    def unwatch(self, subject: str, wait: AckWait) -> None:
        key = subject.lower()
        waits = self._acks.get(key)
        if waits is not None:
            waits.discard(wait)
            if not waits:
                del self._acks[key]

    def lost_for(self) -> float:
        """Seconds since the connection was lost (0 while connected)."""
        return 0.0 if self.lost_since is None else self.clock() - self.lost_since

    def _gauge(self) -> None:
        if self.role:
            metrics.NATS_CONNECTED.labels(self.role).set(1 if self.connected else 0)


class BusBase:
    """The connection every part of the Bus uses: the client, its JetStream context, its state."""

    #: Buses of long-running roles, read by the liveness probe (:func:`nats_liveness`).
    open_buses: set[BusBase] = set()

    def __init__(self, nc: NATS, settings: NatsSettings, state: ConnectionState | None = None):
        self.nc = nc
        self.state = state or ConnectionState(None)
        #: Seconds a stored publish or a JetStream API request may take (NatsSettings.publish_timeout).
        self.timeout = settings.publish_timeout
        self.js: JetStreamContext = nc.jetstream(timeout=self.timeout)
        self.settings = settings
        #: Bumped on every reconnect so pull loops know their pull requests are gone.
        self.epoch = 0
        self.closing = False
        self._audit: AuditWriter | None = None

    @property
    def is_connected(self) -> bool:
        """True while the connection is up."""
        return bool(self.nc.is_connected)

    async def _request(
        self, subject: str, data: bytes, within: float, headers: dict[str, str] | None = None
    ) -> Msg:
        """A request (a stored publish, a JetStream API call); BusPermissionError as soon as the server
        refuses it (it never answers then), TimeoutError when no answer came ``within`` seconds."""
        wait = self.state.watch(subject)
        try:
            return await self.nc.request(subject, data, timeout=within, headers=headers)
        except asyncio.CancelledError:
            # Cancelled by the refusal alone (not also from outside): the request's own error.
            if wait.refused is None or wait.task is None or wait.task.uncancel() > 0:
                raise
            raise BusPermissionError(
                f"publish to {subject!r} refused: this identity may not publish there ({wait.refused})"
            ) from None
        finally:
            self.state.unwatch(subject, wait)

    async def _api(self, subject: str, req: dict[str, Any], *, missing_ok: bool = False) -> dict[str, Any]:
        """One JetStream API request; BusError on an error reply (``{}`` for a 404 when ``missing_ok``)."""
        try:
            resp = await self._request(subject, json.dumps(req).encode(), self.timeout)
        except TimeoutError:
            why = f"{subject}: no answer within {self.timeout:g}s {self.state.last_error}"
            raise BusError(why.rstrip()) from None
        body: dict[str, Any] = json.loads(resp.data)
        err = body.get("error")
        if err:
            if missing_ok and err.get("code") == 404:
                return {}
            raise BusError(f"{subject}: {err.get('description', err)}")
        return body


def nats_liveness(grace: float) -> str | None:
    """Why this process must be restarted, or None: a long-running connection closed for good, or
    lost for more than ``grace`` seconds. Reads every open Bus of the process."""
    for bus in list(BusBase.open_buses):
        state = bus.state
        if state.closed is not None:
            return f"NATS connection closed and will not reconnect: {state.closed}"
        if not state.connected and state.lost_for() > grace:
            return f"NATS connection lost {state.lost_for():.0f}s ago (grace {grace:g}s); {state.last_error}"
    return None


def ssl_context(settings: NatsSettings) -> ssl.SSLContext | None:
    """A client TLS context from CA / client certificate files, or None for plain TCP."""
    if not (settings.tls_ca or settings.tls_cert or settings.url.startswith("tls://")):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.tls_ca)
    if settings.tls_cert:
        ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
    return ctx


async def open_connection(
    settings: NatsSettings,
    state: ConnectionState,
    holder: list[BusBase],
    connect_timeout: float | None,
    retry_refused: bool = False,
) -> NATS:
    """Connect (reconnecting forever with backoff); the callbacks update ``state`` and the Bus that
    ``holder`` holds once it exists. With ``connect_timeout``, BusError (BusAuthError for refused
    credentials) when not connected in time: at the first refusal, unless ``retry_refused`` (an
    identity just created may not be in the server's user list yet), then at the timeout."""
    refused = asyncio.Event()
    nc_holder: list[NATS] = []

    async def on_error(exc: Exception) -> None:
        state.error(str(exc))
        log.warning("nats error: %s", exc)
        if not holder and not retry_refused and "authorization violation" in str(exc).lower():
            refused.set()  # retrying the same credentials cannot help a one-shot command

    async def on_disconnect() -> None:
        if holder and not holder[0].closing:
            state.down()
            log.warning("disconnected from NATS; reconnecting")

    async def on_reconnect() -> None:
        if holder:
            holder[0].epoch += 1
        state.up()
        nc = nc_holder[0] if nc_holder else None
        log.warning("reconnected to NATS at %s", nc.connected_url.netloc if nc and nc.connected_url else "?")

    async def on_closed() -> None:
        if holder and not holder[0].closing:
            why = str((nc_holder[0].last_error if nc_holder else None) or "closed by the server")
            state.closed_for_good(why)
            log.error("NATS connection closed and will not reconnect (%s)", why)

    opts: dict[str, Any] = {
        "servers": [u.strip() for u in settings.url.split(",") if u.strip()],
        "name": settings.name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 1,
        "error_cb": on_error,
        "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnect,
        "closed_cb": on_closed,
        "pending_size": 8 * 1024 * 1024,
    }
    if settings.creds_file:
        opts["user_credentials"] = settings.creds_file
    if settings.user:
        opts["user"] = settings.user
        opts["password"] = settings.password or ""
    if settings.token:
        opts["token"] = settings.token
    if settings.inbox_prefix:
        opts["inbox_prefix"] = settings.inbox_prefix
    tls = ssl_context(settings)
    if tls is not None:
        opts["tls"] = tls
    connecting = asyncio.ensure_future(nats.connect(**opts))
    if connect_timeout is None:
        nc_holder.append(await connecting)
        return nc_holder[0]
    waiting = asyncio.ensure_future(refused.wait())
    await asyncio.wait({connecting, waiting}, timeout=connect_timeout, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if not connecting.done():
        connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await connecting
        if refused.is_set() or "authorization violation" in state.last_error.lower():
            raise BusAuthError(
                f"NATS at {settings.url} refused the connection: Authorization Violation ({_who(settings)})"
            )
        raise BusError(
            f"could not connect to NATS at {settings.url} within {connect_timeout:g}s "
            "(the logged NATS errors say why)"
        )
    nc_holder.append(connecting.result())
    return nc_holder[0]


def _who(settings: NatsSettings) -> str:
    """The credentials a refused connection used, for its error."""
    if settings.user:
        return f"user {settings.user!r}"
    if settings.creds_file:
        return "a credentials file"
    return "a token" if settings.token else "no credentials given"
