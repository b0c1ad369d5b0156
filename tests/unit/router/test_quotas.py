"""The payload size rule and where its limit comes from."""

from __future__ import annotations

import pytest

from loom.api.router_policy import DEFAULT_MAX_PAYLOAD_BYTES, RouterPolicySpec
from loom.quotas import MAX_PAYLOAD_ENV, max_payload_bytes, payload_problem


def test_a_message_at_the_limit_fits_and_one_byte_more_is_refused_with_both_sizes() -> None:
    assert payload_problem(2048, 2048) is None
    problem = payload_problem(2049, 2048, "goal", "--max-payload-bytes")
    assert problem is not None
    assert problem.startswith(
        "goal message is 2049 bytes, over the limit of 2048 bytes (--max-payload-bytes)"
    )


def test_the_limit_comes_from_the_environment_else_the_router_policy_default() -> None:
    assert max_payload_bytes({}) == DEFAULT_MAX_PAYLOAD_BYTES == RouterPolicySpec().max_payload_bytes
    assert max_payload_bytes({MAX_PAYLOAD_ENV: "4096"}) == 4096
    with pytest.raises(ValueError, match="must be a number of bytes"):
        max_payload_bytes({MAX_PAYLOAD_ENV: "4k"})
    with pytest.raises(ValueError, match="must be positive"):
        max_payload_bytes({MAX_PAYLOAD_ENV: "0"})
