"""JetStream Key-Value buckets (pipeline state, checkpoints, schedules, shared limits) and the
helpers that read and write them while a bucket's stream may be electing a leader."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats
from nats.js import api as js_api
from nats.js.errors import (
    APIError,
    BucketNotFoundError,
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoStreamResponseError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue

from loom.bus.connection import BusError
from loom.bus.protocol import KeyValueHandle
from loom.bus.streams import StreamsMixin, _replicas_error, replicas_for
from loom.state_store import KeyValueStore, NatsKeyValueStore


class KeyValueMixin(StreamsMixin):
    """Opening (and creating) Key-Value buckets."""

    def key_value_store(self, bucket: str, *, ttl: float | None = None) -> KeyValueStore:
        """``bucket`` as Loom's one state-store interface (created at first use, entries kept ``ttl`` s)."""
        return NatsKeyValueStore(self, bucket, ttl=ttl)

    async def key_value(self, bucket: str, *, ttl: float | None = None) -> KeyValue:
        """A JetStream Key-Value bucket, created (file storage, the setting's replicas) if missing; the
        first creator's ttl wins. An existing bucket with other replicas than the setting is scaled."""
        kv = await self.existing_key_value(bucket)
        if kv is not None:
            await self._scale_bucket(bucket)
            return kv
        replicas = replicas_for(self.settings.replicas, None)
        try:
            return await self.js.create_key_value(
                js_api.KeyValueConfig(
                    bucket=bucket, ttl=ttl, storage=js_api.StorageType.FILE, replicas=replicas
                )
            )
        except APIError as exc:
            if exc.err_code != 10058:  # another process created it meanwhile, with its own settings
                if replicas > 1:
                    raise _replicas_error(f"Key-Value bucket {bucket}", replicas, exc) from exc
                raise
            return await self.js.key_value(bucket)

    async def existing_key_value(self, bucket: str) -> KeyValue | None:
        """A Key-Value bucket if it exists, None otherwise (readers never create one)."""
        try:
            return await self.js.key_value(bucket)
        except BucketNotFoundError:
            return None

    async def _scale_bucket(self, bucket: str) -> None:
        """Give a bucket's stream the replicas of the setting (nothing when unset or already so)."""
        if self.settings.replicas is None:
            return
        stream = f"KV_{bucket}"
        info = await self.js.stream_info(stream)
        if int(info.config.num_replicas or 1) == self.settings.replicas:
            return
        try:
            await self.js.update_stream(dataclasses.replace(info.config, num_replicas=self.settings.replicas))
        except APIError as exc:
            raise _replicas_error(f"Key-Value bucket {bucket}", self.settings.replicas, exc) from exc
        await self.wait_stream_leader(stream)


_T = TypeVar("_T")
#: What a JetStream request answers while the stream it needs elects a leader (a server was lost).
_UNAVAILABLE = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    NoStreamResponseError,
    ServiceUnavailableError,
)


async def while_unavailable(op: Callable[[], Awaitable[_T]], what: str, *, within: float) -> _T:
    """``op()``, repeated while JetStream is unavailable, for up to ``within`` seconds (the bus's
    ``publish_timeout``: how long its owner waits for any stored write); for operations that may
    safely run twice (a read, a put of the same value, a purge)."""
    deadline = time.monotonic() + within
    pause = 0.1
    while True:
        try:
            return await op()
        except _UNAVAILABLE as exc:
            if time.monotonic() + pause >= deadline:
                raise BusError(f"{what}: JetStream unavailable for {within:g}s ({exc!r})") from exc
        await asyncio.sleep(pause)
        pause = min(1.0, pause * 2)


async def kv_get(kv: KeyValueHandle, key: str, *, within: float) -> bytes | None:
    """The value under ``key``, or None when it is absent or deleted."""

    try:
        entry = await while_unavailable(lambda: kv.get(key), f"reading {key!r}", within=within)
    except (KeyNotFoundError, KeyDeletedError):
        return None
    return entry.value


async def kv_put(kv: KeyValueHandle, key: str, value: bytes, *, within: float) -> None:
    """Store ``value`` under ``key``, again while the bucket elects a leader (the same value twice is
    one more revision, nothing else)."""
    await while_unavailable(lambda: kv.put(key, value), f"writing {key!r}", within=within)


async def kv_delete(kv: KeyValueHandle, key: str, *, within: float) -> None:
    """Remove ``key`` with its history (no error when absent)."""
    await while_unavailable(lambda: kv.purge(key), f"removing {key!r}", within=within)


async def kv_read(kv: KeyValueHandle, key: str) -> tuple[bytes | None, int]:
    """The value under ``key`` and its revision; (None, 0) when absent, (None, revision) when deleted.

    The revision is what :func:`kv_swap` compares against."""

    try:
        entry = await kv.get(key)
    except KeyDeletedError as exc:
        return None, int(exc.entry.revision) if exc.entry is not None and exc.entry.revision else 0
    except KeyNotFoundError:
        return None, 0
    return entry.value, int(entry.revision or 0)


async def kv_swap(kv: KeyValueHandle, key: str, value: bytes, revision: int) -> bool:
    """Write ``value`` only if ``key`` is still at ``revision`` (0: still absent); False when another
    writer came first (compare-and-set on the bucket's per-key sequence)."""

    try:
        await kv.update(key, value, last=revision)
    except KeyWrongLastSequenceError:
        return False
    return True
