"""One key-value interface for the state Loom keeps between messages: the orchestrator's checkpoints
and the pipelines' goal states.

``nats`` (default) stores in a JetStream Key-Value bucket and needs no extra infrastructure;
``redis`` stores in Redis or Valkey (``redis://[:password@]host:port/db``, ``rediss://`` for TLS)
under a key prefix. Both expire entries after the owner's time to live.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loom.bus.kv import KeyValueMixin
    from loom.bus.protocol import RoleBus

#: Schemes :func:`open_key_value_store` accepts for Redis/Valkey.
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class KeyValueStore(ABC):
    """Bytes under string keys (``[A-Za-z0-9_.-]``, chosen by the owner)."""

    @abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The value under ``key``, or None."""

    @abstractmethod
    async def put(self, key: str, value: bytes) -> None:
        """Write (replace) ``key``."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Forget ``key`` (no error when absent)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class NatsKeyValueStore(KeyValueStore):
    """A JetStream Key-Value bucket, opened (created if needed) at first use."""

    def __init__(self, bus: KeyValueMixin, bucket: str, *, ttl: float | None = None):
        self._bus = bus
        self.bucket = bucket
        self._ttl = ttl
        self._kv: Any = None

    async def _store(self) -> Any:
        if self._kv is None:
            self._kv = await self._bus.key_value(self.bucket, ttl=self._ttl)
        return self._kv

    async def open(self) -> None:
        """Open (create) the bucket now, so a problem shows at start rather than at the first goal."""
        await self._store()

    async def get(self, key: str) -> bytes | None:
        from loom.bus import kv_get

        return await kv_get(await self._store(), key, within=self._bus.timeout)

    async def put(self, key: str, value: bytes) -> None:
        from loom.bus import kv_put

        await kv_put(await self._store(), key, value, within=self._bus.timeout)

    async def delete(self, key: str) -> None:
        from loom.bus import kv_delete

        await kv_delete(await self._store(), key, within=self._bus.timeout)


class RedisKeyValueStore(KeyValueStore):
    """Redis or Valkey keys ``<prefix><key>``, each written with the time to live."""

    def __init__(self, url: str, prefix: str, *, ttl: float | None = None):
        import redis.asyncio as redis

        self._client = redis.Redis.from_url(url)
        self.prefix = prefix
        self._ttl = None if ttl is None else max(1, int(ttl))

    async def get(self, key: str) -> bytes | None:
        data = await self._client.get(self.prefix + key)
        if data is None:
            return None
        return data if isinstance(data, bytes) else str(data).encode()

    async def put(self, key: str, value: bytes) -> None:
        await self._client.set(self.prefix + key, value, ex=self._ttl)

    async def delete(self, key: str) -> None:
        await self._client.delete(self.prefix + key)

    async def close(self) -> None:
        await self._client.aclose()


def open_key_value_store(
    url: str | None, bus: RoleBus, *, bucket: str, prefix: str, ttl: float | None
) -> KeyValueStore:
    """``url`` None, ``""`` or ``nats``: the bucket on ``bus``; a redis URL: Redis/Valkey; else ValueError."""
    if not url or url == "nats":
        return bus.key_value_store(bucket, ttl=ttl)
    if url.startswith(REDIS_SCHEMES):
        return RedisKeyValueStore(url, prefix, ttl=ttl)
    raise ValueError(f"state store {url!r}: use nats (the default) or a redis:// / rediss:// URL")
