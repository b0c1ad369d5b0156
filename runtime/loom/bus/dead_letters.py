"""What the Bus keeps for people to read back: dead letters (with replay) and the audit trail."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nats.js import api as js_api

from loom.audit import AuditRecord, unpack
from loom.bus.connection import BusError
from loom.bus.publish import PublishMixin
from loom.bus.streams import DUPLICATE_WINDOW, StreamsMixin, replicas_for, stream_config_matches
from loom.dead_letters import decode_original
from loom.messages import DeadLetter
from loom.subjects import AUDIT_PREFIX, DEAD_LETTER, STREAM_AUDIT, STREAM_DEAD_LETTER

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredDeadLetter:
    """A dead letter and where it is stored."""

    seq: int
    dead_letter: DeadLetter


class DeadLettersMixin(PublishMixin, StreamsMixin):
    """Listing, finding and replaying stored dead letters."""

    async def dead_letters(self) -> list[StoredDeadLetter]:
        """Every stored dead letter, oldest first."""
        out: list[StoredDeadLetter] = []
        async for seq, data in self._scan(STREAM_DEAD_LETTER, DEAD_LETTER):
            try:
                out.append(StoredDeadLetter(seq, DeadLetter.from_bytes(data)))
            except ValueError as exc:
                log.warning("dead letter #%d is unreadable: %s", seq, exc)
        return out

    async def find_dead_letter(self, dead_letter_id: str) -> StoredDeadLetter | None:
        """A dead letter by id (a unique prefix is enough)."""
        matches = [
            d for d in await self.dead_letters() if d.dead_letter.dead_letter_id.startswith(dead_letter_id)
        ]
        if len(matches) > 1 and not any(d.dead_letter.dead_letter_id == dead_letter_id for d in matches):
            raise BusError(f"dead letter id prefix {dead_letter_id!r} is ambiguous ({len(matches)} match)")
        exact = [d for d in matches if d.dead_letter.dead_letter_id == dead_letter_id]
        return exact[0] if exact else (matches[0] if matches else None)

    async def replay_dead_letter(
        self, stored: StoredDeadLetter, *, keep: bool = False, body: bytes | None = None
    ) -> None:
        """Publish the original message (or ``body``, its corrected version) again to its original
        subject, then drop the dead letter."""
        dl = stored.dead_letter
        if body is None and not dl.replayable:
            raise BusError(
                f"dead letter {dl.dead_letter_id} cannot be replayed: "
                f"{dl.reason.value}, its body was not kept"
            )
        await self.js_publish(dl.subject, decode_original(dl.original) if body is None else body)
        if not keep:
            await self.delete_stream_message(STREAM_DEAD_LETTER, stored.seq)


class AuditMixin(StreamsMixin):
    """The audit stream: declaring it, reading records back (the writer is :attr:`Bus.audit`)."""

    async def ensure_audit_stream(self, max_age: float, set_age: bool) -> None:
        """Declare the audit stream (limits retention, file storage) if missing; with ``set_age`` an
        existing one gets ``max_age`` as its retention too."""
        body = await self._api(f"$JS.API.STREAM.INFO.{STREAM_AUDIT}", {}, missing_ok=True)
        existing = body.get("config")
        if existing and not set_age:
            return
        config = js_api.StreamConfig(
            name=STREAM_AUDIT,
            subjects=[f"{AUDIT_PREFIX}.>"],
            retention=js_api.RetentionPolicy.LIMITS,
            storage=js_api.StorageType.FILE,
            num_replicas=replicas_for(self.settings.replicas, existing),
            max_age=max_age,
            discard=js_api.DiscardPolicy.OLD,
            duplicate_window=DUPLICATE_WINDOW,
            description="Audit trail: one record per task and goal outcome.",
        )
        if not (existing and stream_config_matches(existing, config.as_dict())):
            await self._put_stream(config)

    async def audit_records(self, tenant: str | None = None) -> list[AuditRecord]:
        """Every stored audit record (of one tenant when given), oldest first."""
        out: list[AuditRecord] = []
        subject = f"{AUDIT_PREFIX}.{tenant}" if tenant else f"{AUDIT_PREFIX}.>"
        async for seq, data in self._scan(STREAM_AUDIT, subject):
            try:
                out.extend(unpack(data))
            except ValueError as exc:
                log.warning("audit message #%d is unreadable: %s", seq, exc)
        return out
