"""Kopf's pause rule as the operator's background loops apply it (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from loom_operator.peering import blocking_peers
from loom_operator.settings import Settings

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def peer(priority: int, seen_ago: float, lifetime: int = 10) -> dict[str, object]:
    return {
        "priority": priority,
        "lifetime": lifetime,
        "lastseen": (NOW - timedelta(seconds=seen_ago)).isoformat(),
    }


def test_live_peers_of_higher_or_equal_priority_block() -> None:
    status = {
        "me": peer(50, 0),
        "higher": peer(90, 3),
        "same": peer(50, 1),
        "lower": peer(10, 0),
        "higher-but-expired": peer(99, 11),
        "gone": None,  # what a replica leaves behind when it exits cleanly
    }
    assert blocking_peers(status, "me", 50, NOW) == ["higher", "same"]
    assert blocking_peers(status, "me", 95, NOW) == []


def test_peer_without_lifetime_or_lastseen_uses_kopfs_defaults() -> None:
    def seen(ago: float) -> str:
        return (NOW - timedelta(seconds=ago)).isoformat()

    status = {"old": {"priority": 9, "lastseen": seen(59)}, "new": {"priority": 9}}
    assert blocking_peers(status, "me", 1, NOW) == ["new", "old"]
    assert blocking_peers({"old": {"priority": 9, "lastseen": seen(61)}}, "me", 1, NOW) == []


def test_kopfs_timestamp_format_parses() -> None:
    assert blocking_peers(
        {"p": {"priority": 2, "lastseen": "2026-01-01T11:59:59.5+00:00"}}, "me", 1, NOW
    ) == ["p"]
    assert blocking_peers({"p": {"priority": 2, "lastseen": "2026-01-01T11:59:59Z"}}, "me", 1, NOW) == ["p"]


def test_peering_lifetime_from_env() -> None:
    assert Settings.from_env({"LOOM_PEERING": "loom", "LOOM_PEERING_LIFETIME": "15"}).peering_lifetime == 15
    assert Settings.from_env({}).peering_lifetime is None
