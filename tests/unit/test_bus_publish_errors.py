"""Which JetStream publish errors the bus retries until its publish timeout, and which it reports at once."""

from __future__ import annotations

import pytest

from loom.bus.publish import publish_error_is_transient


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        # What nats-server answers when a stream is over a limit: refused for good, reported at once.
        ({"code": 503, "err_code": 10077, "description": "maximum messages per subject exceeded"}, False),
        ({"code": 503, "err_code": 10077, "description": "maximum messages exceeded"}, False),
        ({"code": 503, "err_code": 10077, "description": "maximum bytes exceeded"}, False),
        # JetStream itself unavailable (no leader yet): the same publish may be stored in a moment.
        ({"code": 503, "err_code": 10008, "description": "JetStream cluster not available"}, True),
        ({"code": 503, "description": "JetStream system temporarily unavailable"}, True),
        # Anything else is the caller's mistake or a permission: retrying cannot help.
        ({"code": 400, "err_code": 10060, "description": "expected stream does not match"}, False),
    ],
)
def test_only_an_unavailable_jetstream_is_retried(error: dict[str, object], transient: bool) -> None:
    assert publish_error_is_transient(error) is transient
