"""Where a pipeline keeps goal states: the flag, the Pipeline's stateStore, the environment, in that order."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from loom.api.pipeline import PipelineSpec, PipelineStateStore
from loom.pipeline.state import StateStoreConfigError, state_store_url

REDIS = PipelineStateStore.model_validate(
    {"backend": "redis", "urlSecretRef": {"name": "redis", "key": "url"}, "urlEnv": "MY_REDIS"}
)


def test_nothing_configured_means_the_nats_bucket() -> None:
    assert state_store_url(None, None, {}) is None
    assert state_store_url(None, None, {"LOOM_PIPELINE_STATE_STORE": "nats"}) is None
    assert state_store_url(PipelineStateStore(), None, {"LOOM_PIPELINE_STATE_STORE": "redis://x"}) is None


def test_the_environment_default_applies_only_without_a_state_store() -> None:
    assert state_store_url(None, None, {"LOOM_PIPELINE_STATE_STORE": "redis://a"}) == "redis://a"


def test_a_redis_state_store_reads_its_own_variable() -> None:
    assert state_store_url(REDIS, None, {"MY_REDIS": "rediss://b"}) == "rediss://b"


def test_the_flag_wins_over_the_spec() -> None:
    assert state_store_url(REDIS, "redis://flag", {"MY_REDIS": "rediss://b"}) == "redis://flag"
    assert state_store_url(REDIS, "nats", {"MY_REDIS": "rediss://b"}) is None


def test_redis_without_its_url_is_a_clear_error() -> None:
    with pytest.raises(StateStoreConfigError, match=r"MY_REDIS is not set .*Secret 'redis', key 'url'"):
        state_store_url(REDIS, None, {})


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ({"backend": "redis"}, "backend redis needs urlSecretRef"),
        (
            {"backend": "nats", "urlSecretRef": {"name": "r", "key": "u"}},
            "backend nats takes no urlSecretRef",
        ),
        ({"backend": "postgres"}, "Input should be 'nats' or 'redis'"),
        (
            {"backend": "redis", "urlSecretRef": {"name": "r", "key": "u"}, "urlEnv": "lower"},
            "stateStore.urlEnv",
        ),
    ],
)
def test_bad_state_stores_are_refused(store: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PipelineSpec.model_validate(
            {"name": "p", "pipelineStages": [{"name": "a", "workerType": "w"}], "stateStore": store}
        )
