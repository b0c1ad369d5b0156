"""Kopf's "last handled" state as a digest, not a second copy of the spec.

Kopf decides between create, update and resume by diffing the object's essence with
the last handled one. Its stock storages keep the whole essence: in an annotation
(256 KiB limit, and the operator would write metadata) or in status (the object
doubles, and a large spec then fails every status write with ``request is too
large``). The handlers here are level-based and never read the diff, so a digest is
enough: an unchanged essence is reported as unchanged, anything else as changed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import kopf

#: Where earlier operator versions kept the full essence; removed on the next store.
LEGACY_FIELD = "status.kopf.lastHandledConfiguration"


def essence_digest(essence: Any) -> str:
    """SHA-256 of an essence in canonical JSON (independent of key order)."""
    blob = json.dumps(essence, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class DigestDiffBaseStorage(kopf.DiffBaseStorage):
    """Stores ``sha256(essence)``; ``fetch`` returns the current essence when it matches.

    On a mismatch it returns a marker essence, which Kopf sees as a change (an update);
    with nothing stored (and no legacy copy) it returns None, which Kopf sees as new.
    """

    def __init__(self) -> None:
        super().__init__()
        self._legacy = kopf.StatusDiffBaseStorage(field=LEGACY_FIELD)

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        status = body.get("status") or {}
        stored = (status.get("kopf") or {}).get("lastHandledDigest")
        if stored is None:
            return self._legacy.fetch(body=body)
        current = self.build(body=body)
        if essence_digest(current) == stored:
            return current
        marker: Any = {"lastHandledDigest": stored}
        return marker

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        kopf_status = patch.setdefault("status", {}).setdefault("kopf", {})
        kopf_status["lastHandledDigest"] = essence_digest(essence)
        if ((body.get("status") or {}).get("kopf") or {}).get("lastHandledConfiguration") is not None:
            kopf_status["lastHandledConfiguration"] = None  # merge patch: drop the old full copy
