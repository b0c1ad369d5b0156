"""Virtual time for retry and backoff tests: sleeps are recorded, not waited."""

from __future__ import annotations


class VirtualSleep:
    """Records requested sleeps instead of waiting (and advances a virtual clock)."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self.now = 1000.0

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now
