"""The payload size rule: one wording for the ``too_large`` dead letters and ``loom submit``'s refusal.

The router's limit is its RouterPolicy's ``maxPayloadBytes``; processes without a
RouterPolicy (``loom submit``, the goal runners) read :data:`MAX_PAYLOAD_ENV`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from loom.api.router_policy import DEFAULT_MAX_PAYLOAD_BYTES

#: Largest task or goal message of the processes that have no RouterPolicy (bytes).
MAX_PAYLOAD_ENV = "LOOM_MAX_PAYLOAD_BYTES"


def max_payload_bytes(env: Mapping[str, str] | None = None) -> int:
    """The limit from :data:`MAX_PAYLOAD_ENV`, else the RouterPolicy default (1 MiB)."""
    text = (os.environ if env is None else env).get(MAX_PAYLOAD_ENV, "")
    if not text:
        return DEFAULT_MAX_PAYLOAD_BYTES
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{MAX_PAYLOAD_ENV} must be a number of bytes, got {text!r}") from None
    if value < 1:
        raise ValueError(f"{MAX_PAYLOAD_ENV} must be positive, got {value}")
    return value


def payload_problem(
    size: int, limit: int, what: str = "task", setting: str = "RouterPolicy maxPayloadBytes"
) -> str | None:
    """Why a message of ``size`` bytes is refused under ``limit`` (configured as ``setting``), or None."""
    if size <= limit:
        return None
    return (
        f"{what} message is {size} bytes, over the limit of {limit} bytes ({setting}); "
        "pass large inputs by reference (a file ref or URL) instead"
    )
