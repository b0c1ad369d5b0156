"""Checkpoints of a goal orchestrator's working context, in NATS KV (default) or Redis/Valkey.

When the orchestrator's context grows past its token threshold it writes a
checkpoint — an executive summary, the work completed and still pending, and
the decisions taken — and continues from what it reads back, so the context
stays bounded. The same record lets a restarted (or another) orchestrator
pick the goal up where it was left instead of starting over.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from loom.messages import utcnow
from loom.state_store import KeyValueStore, RedisKeyValueStore

if TYPE_CHECKING:
    from loom.bus.protocol import RoleBus

CHECKPOINT_BUCKET = "loom-checkpoints"
REDIS_PREFIX = "loom:checkpoint:"


class Checkpoint(BaseModel):
    """The compressed state of one goal's orchestration."""

    model_config = ConfigDict(extra="ignore")

    goal_id: str
    sequence: int = Field(default=1, ge=1, description="Increases with every checkpoint of the goal.")
    executive_summary: str = ""
    completed: list[dict[str, Any]] = Field(default_factory=list)
    pending: list[dict[str, Any]] = Field(default_factory=list)
    decisions: list[str] = Field(default_factory=list)
    context_tokens: int = 0
    data: dict[str, Any] = Field(default_factory=dict, description="Owner-specific state (e.g. the goal).")
    created_at: datetime = Field(default_factory=utcnow)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        return cls.model_validate_json(data)


class CheckpointStore:
    """Checkpoints as JSON under ``[A-Za-z0-9_.-]`` keys chosen by the owner, in any
    :class:`~loom.state_store.KeyValueStore`."""

    def __init__(self, store: KeyValueStore):
        self.store = store

    async def save(self, key: str, checkpoint: Checkpoint) -> None:
        """Write (replace) the checkpoint under ``key``."""
        await self.store.put(key, checkpoint.to_bytes())

    async def load(self, key: str) -> Checkpoint | None:
        """The checkpoint under ``key``, or None."""
        data = await self.store.get(key)
        return None if data is None else Checkpoint.from_bytes(data)

    async def delete(self, key: str) -> None:
        """Forget ``key`` (no error when absent)."""
        await self.store.delete(key)

    async def close(self) -> None:
        await self.store.close()


class KVCheckpointStore(CheckpointStore):
    """Checkpoints in the bus's Key-Value bucket ``loom-checkpoints`` (JetStream: no extra infrastructure)."""

    def __init__(self, bus: RoleBus, *, bucket: str = CHECKPOINT_BUCKET, ttl: float | None = None):
        super().__init__(bus.key_value_store(bucket, ttl=ttl))


class RedisCheckpointStore(CheckpointStore):
    """Checkpoints in Redis or Valkey (``redis://[:password@]host:port/db``), under ``loom:checkpoint:``."""

    def __init__(self, url: str, *, ttl: float | None = None, prefix: str = REDIS_PREFIX):
        super().__init__(RedisKeyValueStore(url, prefix, ttl=ttl))
