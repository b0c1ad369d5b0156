from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from tests.fakes.llm_server import FakeLLMServer, Reply
from tests.fakes.virtual_time import VirtualSleep

from loom.llm.base import ChatRequest, Message
from loom.llm.errors import BadRequest, ProviderTimeout, RateLimited, Unavailable
from loom.llm.openai_provider import OpenAIProvider
from loom.llm.resilience import BreakerState, CircuitBreaker, ResilientProvider, RetryPolicy

REQUEST = ChatRequest(messages=[Message(role="user", content="hi")], max_tokens=16)


class FixedClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_full_jitter_grows_exponentially_and_caps() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=4.0)
    err = Unavailable("x")
    assert [policy.delay(n, err, lambda: 1.0) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert policy.delay(3, err, lambda: 0.25) == 1.0
    assert policy.delay(3, err, lambda: 0.0) == 0.0


def test_retry_after_is_a_floor() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=4.0)
    assert policy.delay(0, RateLimited("slow down", retry_after=7.0), lambda: 1.0) == 7.0
    assert policy.delay(3, RateLimited("slow down", retry_after=0.1), lambda: 1.0) == 4.0
    assert policy.delay(0, RateLimited("slow down", retry_after=None), lambda: 0.5) == 0.25


def test_breaker_opens_half_opens_and_closes() -> None:
    clock = FixedClock()
    changes: list[BreakerState] = []
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=10, clock=clock, on_change=changes.append)
    for _ in range(2):
        breaker.acquire()
        breaker.failure(Unavailable("down"))
    assert breaker.state is BreakerState.CLOSED
    breaker.acquire()
    breaker.failure(ProviderTimeout("slow"))
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(Unavailable, match="circuit open"):
        breaker.acquire()
    clock.now = 10.0
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.acquire()  # the probe
    with pytest.raises(Unavailable, match="probe"):
        breaker.acquire()  # only one probe at a time
    breaker.failure(Unavailable("still down"))
    assert breaker.state is BreakerState.OPEN
    clock.now = 25.0
    breaker.acquire()
    breaker.success()
    assert breaker.state is BreakerState.CLOSED
    assert changes == [
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.CLOSED,
    ]


def test_rate_limits_and_bad_requests_do_not_open_the_circuit() -> None:
    breaker = CircuitBreaker(failure_threshold=1, clock=FixedClock())
    breaker.acquire()
    breaker.failure(RateLimited("429"))
    breaker.acquire()
    breaker.failure(BadRequest("400"))
    assert breaker.state is BreakerState.CLOSED


def test_cancelled_probe_frees_the_half_open_slot() -> None:
    clock = FixedClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=1, clock=clock)
    breaker.acquire()
    breaker.failure(Unavailable("x"))
    clock.now = 2
    breaker.acquire()
    breaker.release()
    breaker.acquire()  # another probe may go


def _client(fake: FakeLLMServer, vsleep: VirtualSleep, tier: str, **kw: object) -> ResilientProvider:
    inner = OpenAIProvider("m", base_url=fake.url, timeout=5)
    return ResilientProvider(
        inner,
        tier=tier,
        call_timeout=kw.pop("call_timeout", 5.0),  # type: ignore[arg-type]
        sleep=vsleep,
        clock=vsleep.clock,
        rand=lambda: 1.0,
        **kw,  # type: ignore[arg-type]
    )


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_429_retry_after_then_success(openai_fake: FakeLLMServer, vsleep: VirtualSleep) -> None:
    client = _client(openai_fake, vsleep, "t429", policy=RetryPolicy(max_retries=3, base_delay=0.01))
    openai_fake.push(
        Reply(status=429, headers={"retry-after-ms": "1500"}),
        Reply(status=429, headers={"Retry-After": "2"}),
        Reply(json={"ok": 1}, prompt_tokens=5, completion_tokens=3),
    )
    response = await client.complete(REQUEST)
    assert response.text == '{"ok": 1}'
    assert vsleep.calls == [1.5, 2.0]
    assert len(openai_fake.requests) == 3
    labels = {"backend": "openai", "tier": "t429"}
    assert _sample("loom_llm_requests_total", outcome="rate_limited", **labels) == 2
    assert _sample("loom_llm_requests_total", outcome="ok", **labels) == 1
    assert _sample("loom_llm_retries_total", reason="rate_limited", **labels) == 2
    assert _sample("loom_llm_tokens_total", kind="prompt", **labels) == 5
    assert _sample("loom_llm_tokens_total", kind="completion", **labels) == 3
    await client.close()


async def test_5xx_retried_until_budget_spent(openai_fake: FakeLLMServer, vsleep: VirtualSleep) -> None:
    client = _client(openai_fake, vsleep, "t5xx", policy=RetryPolicy(max_retries=2, base_delay=0.1))
    openai_fake.push(*[Reply(status=500, error="boom")] * 3, Reply(json={"late": True}))
    with pytest.raises(Unavailable, match=r"^HTTP 500 \(api_error\)$"):  # the body's text stays out
        await client.complete(REQUEST)
    assert len(openai_fake.requests) == 3
    assert vsleep.calls == [0.1, 0.2]
    await client.close()


async def test_non_retryable_error_is_not_retried(openai_fake: FakeLLMServer, vsleep: VirtualSleep) -> None:
    client = _client(openai_fake, vsleep, "t400")
    openai_fake.push(Reply(status=400, error="bad field"))
    with pytest.raises(BadRequest):
        await client.complete(REQUEST)
    assert len(openai_fake.requests) == 1
    assert vsleep.calls == []
    await client.close()


async def test_deadline_stops_backoff(openai_fake: FakeLLMServer, vsleep: VirtualSleep) -> None:
    client = _client(openai_fake, vsleep, "tdl")
    openai_fake.push(Reply(status=429, headers={"retry-after": "30"}))
    with pytest.raises(RateLimited) as info:
        await client.complete(REQUEST, deadline=vsleep.now + 10)
    assert info.value.retry_after == 30
    assert vsleep.calls == []
    await client.close()


async def test_per_call_timeout(openai_fake: FakeLLMServer, vsleep: VirtualSleep) -> None:
    client = _client(openai_fake, vsleep, "tslow", call_timeout=0.2, policy=RetryPolicy(max_retries=1))
    openai_fake.push(Reply(json={"a": 1}, delay=5), Reply(json={"a": 2}))
    response = await client.complete(REQUEST)
    assert response.text == '{"a": 2}'
    assert _sample("loom_llm_requests_total", backend="openai", tier="tslow", outcome="timeout") == 1
    await client.close()


async def test_open_circuit_fails_fast_without_calling(
    openai_fake: FakeLLMServer, vsleep: VirtualSleep
) -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=30, clock=vsleep.clock)
    client = _client(openai_fake, vsleep, "tcb", breaker=breaker, policy=RetryPolicy(max_retries=5))
    openai_fake.push(Reply(status=529, error="overloaded"), Reply(status=503))
    with pytest.raises(Unavailable, match="circuit open"):
        await client.complete(REQUEST)
    assert len(openai_fake.requests) == 2
    assert _sample("loom_llm_circuit_open", backend="openai", tier="tcb") == 1
    with pytest.raises(Unavailable, match="circuit open"):
        await client.complete(REQUEST)
    assert len(openai_fake.requests) == 2
    vsleep.now += 30
    assert (await client.complete(REQUEST)).text == '{"ok": true}'
    assert breaker.state is BreakerState.CLOSED
    assert _sample("loom_llm_circuit_open", backend="openai", tier="tcb") == 0
    await client.close()
