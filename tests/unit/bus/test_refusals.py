"""A publish the server refuses (NATS permissions) ends at once: the server never answers it, so
the refusal it reports to the error callback ends the wait of the requests to that subject."""

from __future__ import annotations

import asyncio

import pytest

from loom.bus import ConnectionState

REFUSAL = 'nats: permissions violation for publish to "$js.api.stream.delete.loom_tasks"'


async def _waits(state: ConnectionState, subject: str, outcome: list[str]) -> None:
    """A request's wait, as BusBase._request registers it."""
    wait = state.watch(subject)
    try:
        await asyncio.sleep(600)
    except asyncio.CancelledError:
        outcome.append(f"cancelled: {wait.refused}")
        raise
    finally:
        state.unwatch(subject, wait)


async def test_a_refusal_ends_the_wait_of_the_requests_to_its_subject_only() -> None:
    state = ConnectionState(None)
    refused: list[str] = []
    other: list[str] = []
    a = asyncio.create_task(_waits(state, "$JS.API.STREAM.DELETE.LOOM_TASKS", refused))
    b = asyncio.create_task(_waits(state, "loom.tasks.incoming", other))
    await asyncio.sleep(0)
    state.error(REFUSAL)  # the client lower-cases the server's text, subject included
    done, _ = await asyncio.wait({a}, timeout=20)  # (asyncio.wait leaves a running task alone)
    assert a in done and a.cancelled()  # its wait ended, by the refusal
    assert refused == [f"cancelled: {REFUSAL}"]
    assert not b.done() and other == []
    assert state.last_error == f"last error: {REFUSAL}"
    b.cancel()
    with pytest.raises(asyncio.CancelledError):
        await b
    assert state._acks == {}  # nothing left registered


async def test_errors_that_are_not_a_refused_publish_end_no_wait() -> None:
    state = ConnectionState(None)
    outcome: list[str] = []
    task = asyncio.create_task(_waits(state, "loom.tasks.>", outcome))
    await asyncio.sleep(0)
    state.error('nats: permissions violation for subscription to "loom.tasks.>"')
    state.error("nats: slow consumer")
    await asyncio.sleep(0.05)
    assert not task.done() and outcome == []
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
