"""A publish the server refuses (NATS permissions) ends at once: the server never answers it, so
the refusal it reports to the error callback ends the wait of the requests to that subject."""

from __future__ import annotations

import asyncio

import pytest

from loom.bus import ConnectionState

REFUSAL = 'nats: permissions violation for publish to "$js.api.stream.delete.loom_tasks"'


async def test_a_refusal_ends_the_wait_of_the_requests_to_its_subject_only() -> None:
    state = ConnectionState(None)
    with (
        state.awaiting_ack("$JS.API.STREAM.DELETE.LOOM_TASKS") as refused,
        state.awaiting_ack("loom.tasks.incoming") as other,
    ):
        async with asyncio.timeout(20):  # were the refusal ignored, this would end the wait instead
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(600) as refused.timeout:
                    asyncio.get_running_loop().call_soon(state.error, REFUSAL)
                    await asyncio.sleep(600)
        assert refused.timeout is not None and refused.timeout.expired()  # its own wait ended
        assert refused.refused == REFUSAL and other.refused is None
    assert state.last_error == f"last error: {REFUSAL}"
    assert state._acks == {}  # nothing left registered


async def test_a_refusal_after_the_request_ended_changes_nothing() -> None:
    state = ConnectionState(None)
    with state.awaiting_ack("$JS.API.STREAM.DELETE.LOOM_TASKS") as wait:
        async with asyncio.timeout(600) as wait.timeout:
            await asyncio.sleep(0)  # answered at once
        state.error(REFUSAL)  # the attempt is over: nothing to end, no error
        assert wait.refused == REFUSAL
    state.error('nats: permissions violation for subscription to "loom.tasks.>"')  # not a publish
