"""What the HTTP providers share: a pooled client, POST-and-parse, and HTTP-to-error mapping.

The client is aiohttp's: with hundreds of model calls in flight in one worker process, the
client's own CPU per call decides how close the process gets to its in-flight ceiling, and
aiohttp spends a fifth of what httpx did per call (measured with ``bench/bench_llm_inflight.py``).
"""

from __future__ import annotations

import email.utils
import functools
import json
import os
import re
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from loom.llm.errors import (
    AuthenticationFailed,
    BadRequest,
    ContextTooLong,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    Unavailable,
)

#: Connections per provider client: enough for hundreds of calls in flight without a thread each.
DEFAULT_MAX_CONNECTIONS = 512

_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "context length",
    "context window",
    "prompt is too long",
    "too many tokens",
    "exceeds the available context",
)


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, or ``Retry-After`` (seconds or an HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


#: What a provider's error type may look like to be quoted (``rate_limit_error``, ``invalid_request_error``).
_ERROR_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


def provider_error_type(body: str) -> str | None:
    """The provider's error type from a JSON error body (OpenAI ``error.type``/``error.code``,
    Anthropic ``error.type``), if it looks like an identifier; nothing else of the body is kept."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, dict):
        return None
    for key in ("type", "code"):
        value = error.get(key)
        if isinstance(value, str) and _ERROR_TYPE.match(value):
            return value
    return None


def error_for_status(status: int, headers: Mapping[str, str], body: str) -> ProviderError:
    """The typed error for a non-2xx answer.

    The message holds the status code and the provider's error type only: a body can
    carry anything the endpoint chose to say, and messages reach task results and dead
    letters. The body is read (not quoted) to tell a too-long context from other 400s.
    """
    kind = provider_error_type(body)
    message = f"HTTP {status} ({kind})" if kind else f"HTTP {status}"
    lowered = body.lower()
    if status == 429:
        return RateLimited(message, retry_after=parse_retry_after(headers))
    if status in (401, 403):
        return AuthenticationFailed(message, status=status)
    if status in (400, 413, 422) and any(m in lowered for m in _CONTEXT_MARKERS):
        return ContextTooLong(message, status=status)
    if status == 408:
        return ProviderTimeout(message, status=status)
    if status >= 500:
        return Unavailable(message, status=status)
    return BadRequest(message, status=status)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context for every client (building one per client costs milliseconds)."""
    import certifi

    return ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or certifi.where())


@dataclass(frozen=True)
class HttpResponse:
    """A whole answer: status, headers (case-insensitive) and body, read before the connection is reused."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes

    @property
    def text(self) -> str:
        """The body as text (undecodable bytes replaced)."""
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON (raises ValueError when it is not)."""
        return json.loads(self.content)


class HttpPool:
    """Pooled async HTTP for one base URL (aiohttp, no thread per call).

    The session is opened on first use, inside the running event loop. Redirects are not
    followed (a redirect elsewhere would skip the endpoint allow-list). A proxy comes from the
    environment (``HTTPS_PROXY``, ``NO_PROXY``), looked up once when the session opens: aiohttp's
    own ``trust_env`` reads it, and ``~/.netrc``, on a thread for every request. ``timeout``
    bounds getting a connection and each wait for the server; the whole call is bounded by the
    caller's deadline.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        headers: Mapping[str, str] | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ):
        self.base_url = base_url.rstrip("/") + "/"
        self.timeout = timeout
        self.headers = dict(headers or {})
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._proxy: tuple[URL, aiohttp.BasicAuth | None] | tuple[None, None] = (None, None)

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            https = self.base_url.lower().startswith("https:")
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.max_connections, ssl=_tls_context() if https else True
                ),
                timeout=aiohttp.ClientTimeout(total=None, connect=self.timeout, sock_read=self.timeout),
                headers=self.headers,
            )
            try:
                self._proxy = get_env_proxy_for_url(URL(self.base_url))
            except LookupError:  # no proxy for this URL
                self._proxy = (None, None)
        return self._session

    async def post(self, path: str, content: bytes, headers: Mapping[str, str]) -> HttpResponse:
        """POST ``content`` to ``path`` (relative to the base URL) and read the whole answer."""
        session = self._open()
        proxy, proxy_auth = self._proxy
        async with session.post(
            self.base_url + path,
            data=content,
            headers=headers,
            allow_redirects=False,
            proxy=proxy,
            proxy_auth=proxy_auth,
        ) as response:
            return HttpResponse(response.status, response.headers, await response.read())

    async def aclose(self) -> None:
        """Close the session and its connections."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def __repr__(self) -> str:
        return f"HttpPool({self.base_url!r}, max {self.max_connections} connections)"


async def post_json(client: HttpPool, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST ``body`` as JSON and return the JSON object answered, or raise a typed error."""
    try:
        response = await client.post(path, json.dumps(body).encode(), _JSON)
    except TimeoutError as exc:
        raise ProviderTimeout(f"{type(exc).__name__} calling {path}") from exc
    except aiohttp.ClientError as exc:
        raise Unavailable(f"{type(exc).__name__} calling {path}: {exc}") from exc
    if response.status_code >= 300:
        raise error_for_status(response.status_code, response.headers, response.text)
    try:
        data = response.json()
    except ValueError as exc:
        raise Unavailable(f"unreadable response body from {path} (HTTP {response.status_code})") from exc
    if not isinstance(data, dict):
        raise Unavailable(f"unexpected response body from {path}: not a JSON object")
    return data


_JSON = {"content-type": "application/json"}
