"""What the httpx-based providers share: pooled clients, POST-and-parse, and HTTP-to-error mapping."""

from __future__ import annotations

import email.utils
import functools
import itertools
import json
import math
import os
import re
import ssl
import time
from collections.abc import Mapping
from typing import Any

import httpx

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


#: httpcore's pool scans its connections and waiting requests on every request, a cost that grows
#: with the square of the pool size; hundreds of calls in flight through one pool crawl. A large pool
#: is therefore split into shards of at most this many connections, used round-robin.
SHARD_CONNECTIONS = 32


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context for every client (building one per client costs milliseconds)."""
    import certifi

    return ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or certifi.where())


class HttpPool:
    """Pooled async HTTP for one base URL: httpx clients in shards, no thread per call."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        headers: Mapping[str, str] | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ):
        shards = max(1, math.ceil(max_connections / SHARD_CONNECTIONS))
        per_shard = math.ceil(max_connections / shards)
        limits = httpx.Limits(max_connections=per_shard, max_keepalive_connections=per_shard)
        self.clients = [
            httpx.AsyncClient(
                base_url=base_url.rstrip("/") + "/",
                timeout=httpx.Timeout(timeout),
                limits=limits,
                headers=dict(headers or {}),
                verify=_tls_context(),
            )
            for _ in range(shards)
        ]
        self._turn = itertools.cycle(self.clients)

    async def post(self, path: str, content: bytes, headers: Mapping[str, str]) -> httpx.Response:
        """POST through the next shard."""
        return await next(self._turn).post(path, content=content, headers=headers)

    async def aclose(self) -> None:
        """Close every shard."""
        for client in self.clients:
            await client.aclose()

    def __repr__(self) -> str:
        return f"HttpPool({len(self.clients)} shards)"


def make_client(
    base_url: str,
    *,
    timeout: float,
    headers: Mapping[str, str] | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> HttpPool:
    """A pooled client; the base URL always ends in ``/`` so relative paths append."""
    return HttpPool(base_url, timeout=timeout, headers=headers, max_connections=max_connections)


async def post_json(client: HttpPool, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST ``body`` as JSON and return the JSON object answered, or raise a typed error."""
    try:
        response = await client.post(path, json.dumps(body).encode(), _JSON)
    except httpx.TimeoutException as exc:
        raise ProviderTimeout(f"{type(exc).__name__} calling {path}") from exc
    except httpx.TransportError as exc:
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
