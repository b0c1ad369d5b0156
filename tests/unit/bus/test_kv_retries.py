"""The Key-Value helpers repeat an operation while JetStream answers "unavailable" (a bucket electing
a leader), for as long as the bus's publish timeout allows, and then fail naming that time."""

from __future__ import annotations

import nats
import pytest

from loom.bus import BusError, kv_get, kv_put


class _Electing:
    """A bucket that answers ``unavailable`` ``failures`` times before each operation succeeds."""

    def __init__(self, failures: int):
        self.failures = failures
        self.calls = 0
        self.stored: dict[str, bytes] = {}

    def _turn(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise nats.errors.NoRespondersError

    async def get(self, key: str) -> object:
        self._turn()
        return type("Entry", (), {"value": self.stored[key]})()

    async def put(self, key: str, value: bytes) -> int:
        self._turn()
        self.stored[key] = value
        return self.calls


async def test_an_operation_is_repeated_until_the_bucket_answers() -> None:
    bucket = _Electing(failures=2)
    await kv_put(bucket, "k", b"v", within=10)
    assert bucket.calls == 3 and bucket.stored == {"k": b"v"}
    assert await kv_get(bucket, "k", within=10) == b"v"


async def test_the_retries_stop_at_the_time_given_and_say_so() -> None:
    bucket = _Electing(failures=1000)
    with pytest.raises(BusError, match=r"reading 'k': JetStream unavailable for 0.25s"):
        await kv_get(bucket, "k", within=0.25)
    assert 1 < bucket.calls < 5  # pauses of 0.1 s, then 0.2 s: not the 10 s default
