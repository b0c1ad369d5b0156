"""Which JetStream publish errors the bus retries until its publish timeout, and which it reports at once."""

from __future__ import annotations

import argparse

import pytest

from loom.bus.publish import publish_error_is_transient
from loom.cli.common import add_nats_options, nats_settings
from loom.settings import DEFAULT_PUBLISH_TIMEOUT, PUBLISH_TIMEOUT_ENV, NatsSettings


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


def test_the_publish_timeout_comes_from_the_environment_or_the_option_and_refuses_nonsense() -> None:
    assert NatsSettings.from_env({}).publish_timeout == DEFAULT_PUBLISH_TIMEOUT == 10.0
    assert NatsSettings.from_env({PUBLISH_TIMEOUT_ENV: "2.5"}).publish_timeout == 2.5
    for bad in ("0", "-1", "soon", "7200"):
        with pytest.raises(ValueError, match=PUBLISH_TIMEOUT_ENV):
            NatsSettings.from_env({PUBLISH_TIMEOUT_ENV: bad})
    parser = argparse.ArgumentParser()
    add_nats_options(parser)
    assert nats_settings(parser.parse_args([])).publish_timeout == DEFAULT_PUBLISH_TIMEOUT
    assert nats_settings(parser.parse_args(["--nats-publish-timeout", "3"])).publish_timeout == 3.0
    with pytest.raises(SystemExit):
        parser.parse_args(["--nats-publish-timeout", "0"])
