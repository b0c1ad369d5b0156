"""Which of several replicas of one model server takes the next request: the pure decision
behind :mod:`loom.llm.balancer`."""

from __future__ import annotations

from collections.abc import Collection, Sequence


def least_in_flight(in_flight: Sequence[int], exclude: Collection[int] = ()) -> int | None:
    """The index of the replica with the fewest requests in flight, the lowest index among equals,
    skipping ``exclude`` (replicas already tried for this request); None when none is left.

    The lowest index among equals keeps requests that come one at a time on the first replica,
    whose prompt cache then holds every worker's prefix; only requests that overlap spread out.
    """
    best: int | None = None
    for index, count in enumerate(in_flight):
        if index in exclude:
            continue
        if best is None or count < in_flight[best]:
            best = index
    return best
