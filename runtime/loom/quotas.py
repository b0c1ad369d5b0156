"""The payload size rule, pure: one wording for the router's ``too_large`` dead letter and ``loom submit``."""

from __future__ import annotations


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
