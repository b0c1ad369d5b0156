"""Typed provider errors and how each maps onto a task error.

Providers raise these instead of their SDK's or HTTP client's exceptions, so
retries, the circuit breaker, metrics and dead-letter reasons depend on one
taxonomy. ``retryable`` says whether calling again can help.
"""

from __future__ import annotations

from loom.errors import InvalidInput, InvalidOutput, TaskError, TaskTimeout


class ProviderError(Exception):
    """A model call failed."""

    kind: str = "provider_error"
    retryable: bool = False

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


class RateLimited(ProviderError):
    """HTTP 429: the provider asks us to slow down, optionally saying for how long."""

    kind = "rate_limited"
    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, status: int | None = 429):
        super().__init__(message, status=status)
        self.retry_after = retry_after


class Unavailable(ProviderError):
    """5xx, 529 overloaded, connection failures, an open circuit, or an unreadable response body."""

    kind = "unavailable"
    retryable = True


class ProviderTimeout(ProviderError):
    """The call ran past its per-call timeout."""

    kind = "timeout"
    retryable = True


class BadRequest(ProviderError):
    """The provider rejected the request (4xx other than auth, rate and context errors)."""

    kind = "bad_request"


class AuthenticationFailed(ProviderError):
    """401/403: the API key is missing, wrong or not allowed to use the model."""

    kind = "authentication"


class ContextTooLong(ProviderError):
    """The prompt does not fit the model's context window (or the worker's max_input_tokens)."""

    kind = "context_too_long"


class InvalidModelOutput(ProviderError):
    """The provider answered, but the answer is not usable (e.g. broken tool-call arguments)."""

    kind = "invalid_model_output"
    retryable = True


class InputTooLong(InvalidInput):
    """The task's prompt is over the worker's ``max_input_tokens``; a retry would not shrink it."""

    code = "input_too_long"


def to_task_error(exc: ProviderError) -> TaskError:
    """The task error a provider error becomes once retries are spent."""
    message = f"{exc.kind}: {exc}"
    if isinstance(exc, ProviderTimeout):
        return TaskTimeout(message, code="provider_timeout")
    if isinstance(exc, ContextTooLong):
        return InputTooLong(message)
    if isinstance(exc, InvalidModelOutput):
        return InvalidOutput(message)
    return TaskError(message, code=f"provider_{exc.kind}", retryable=exc.retryable)


class EndpointNotAllowed(ProviderError):
    """The tier's endpoint is outside the allow-list (or resolves to a refused address): nothing was sent."""

    kind = "endpoint_refused"
