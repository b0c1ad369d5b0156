"""Retries with exponential backoff and full jitter, a circuit breaker, and per-call timeouts.

Everything time-dependent (sleep, clock, random) is injectable, so tests drive
it with virtual time instead of waiting.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from loom.clock import Clock
from loom.llm.base import ChatRequest, ChatResponse, Provider
from loom.llm.errors import ProviderError, ProviderTimeout, RateLimited, Unavailable
from loom.llm.metrics import CallMetrics

Sleep = Callable[[float], Awaitable[None]]
Random = Callable[[], float]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to back off after retryable errors.

    The n-th retry (from 0) waits a uniform random time in ``[0, min(max_delay,
    base_delay * 2**n)]`` ("full jitter", which spreads synchronized clients apart),
    but never less than a 429's Retry-After.
    """

    max_retries: int = 3
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, attempt: int, error: ProviderError, rand: Random = random.random) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        ceiling = min(self.max_delay, self.base_delay * (2**attempt))
        wait = rand() * ceiling
        if isinstance(error, RateLimited) and error.retry_after is not None:
            wait = max(wait, error.retry_after)
        return wait


class BreakerState(StrEnum):
    """Closed: calls flow. Open: calls fail fast. Half-open: one probe call decides."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Stops calling a provider that keeps failing, then probes it after ``reset_timeout``.

    Only errors that say the provider is unwell (unavailable, timeout) count; rate
    limits and bad requests do not open the circuit.
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        clock: Clock = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ):
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self.on_change = on_change
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> BreakerState:
        """Current state (open turns half-open once ``reset_timeout`` has passed)."""
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.reset_timeout:
            self._set(BreakerState.HALF_OPEN)
        return self._state

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            self._state = state
            if self.on_change:
                self.on_change(state)

    def acquire(self) -> None:
        """Permit one call or raise :class:`Unavailable` without calling."""
        state = self.state
        if state is BreakerState.OPEN:
            remaining = self.reset_timeout - (self._clock() - self._opened_at)
            raise Unavailable(f"circuit open after repeated failures; next probe in {remaining:.1f}s")
        if state is BreakerState.HALF_OPEN:
            if self._probing:
                raise Unavailable("circuit half-open; a probe call is in flight")
            self._probing = True

    def success(self) -> None:
        """A permitted call succeeded."""
        self._probing = False
        self._failures = 0
        self._set(BreakerState.CLOSED)

    def failure(self, error: ProviderError) -> None:
        """A permitted call failed."""
        self._probing = False
        if not isinstance(error, Unavailable | ProviderTimeout):
            if self._state is BreakerState.HALF_OPEN:
                self._set(BreakerState.CLOSED)
                self._failures = 0
            return
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
            self._set(BreakerState.OPEN)

    def release(self) -> None:
        """A permitted call was cancelled before it finished (counts neither way)."""
        self._probing = False


class ResilientProvider(Provider):
    """Wraps a provider with per-call timeouts, retries, a circuit breaker and metrics."""

    def __init__(
        self,
        inner: Provider,
        *,
        tier: str,
        call_timeout: float,
        policy: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
        rand: Random = random.random,
    ):
        super().__init__(inner.model)
        self.inner = inner
        self.backend = inner.backend
        self.call_timeout = call_timeout
        self.policy = policy or RetryPolicy()
        self.metrics = CallMetrics(inner.backend, tier)
        self.breaker = breaker or CircuitBreaker(clock=clock)
        self.breaker.on_change = lambda s: self.metrics.circuit(s is BreakerState.OPEN)
        self._sleep = sleep
        self._clock = clock
        self._rand = rand

    async def complete(self, request: ChatRequest, deadline: float | None = None) -> ChatResponse:
        """Call the provider, retrying retryable errors with backoff; never sleeps past ``deadline``
        (a ``clock()`` value)."""
        attempt = 0
        while True:
            self.breaker.acquire()
            started = self._clock()
            try:
                async with asyncio.timeout(self.call_timeout):
                    response = await self.inner.complete(request)
            except TimeoutError:
                error: ProviderError = ProviderTimeout(f"no answer within {self.call_timeout:g}s")
            except ProviderError as exc:
                error = exc
            except BaseException:
                self.breaker.release()
                raise
            else:
                self.breaker.success()
                self.metrics.success(self._clock() - started, response.usage)
                return response
            self.breaker.failure(error)
            self.metrics.failure(self._clock() - started, error.kind)
            if not error.retryable or attempt >= self.policy.max_retries:
                raise error
            wait = self.policy.delay(attempt, error, self._rand)
            if deadline is not None and self._clock() + wait >= deadline:
                raise error
            self.metrics.retry(error.kind)
            await self._sleep(wait)
            attempt += 1

    async def close(self) -> None:
        await self.inner.close()

    def __repr__(self) -> str:
        return f"ResilientProvider({self.inner!r}, timeout={self.call_timeout:g}s)"
