"""Typed task errors: what failed, whether a retry can help, and the dead-letter reason it maps to."""

from __future__ import annotations

from loom.messages import DeadLetterReason, TokenUsage


class TaskError(Exception):
    """A task could not be done.

    ``retryable`` errors are redelivered (with backoff) until the worker's
    ``max_deliver``; the rest fail at once. Either way the caller gets a failed
    result and the task ends as a dead letter with ``reason``.
    """

    code: str = "task_failed"
    retryable: bool = True
    reason: DeadLetterReason = DeadLetterReason.TASK_FAILED
    #: Tokens the failed attempt spent (reported in the failed result, settled against budgets).
    token_usage: TokenUsage | None = None
    #: The model that spent them.
    model_used: str | None = None

    def __init__(self, message: str, *, code: str | None = None, retryable: bool | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable


class InvalidInput(TaskError):
    """The payload breaks the worker's input contract; retrying cannot help."""

    code = "invalid_input"
    retryable = False
    reason = DeadLetterReason.INVALID_INPUT


class InvalidOutput(TaskError):
    """The output breaks the worker's output contract after the model's own ``output_retries``.

    Final: a redelivery would only repeat the same conversation and pay for it again.
    """

    code = "invalid_output"
    retryable = False
    reason = DeadLetterReason.INVALID_OUTPUT


class TaskTimeout(TaskError):
    """The task ran past ``timeout_seconds``."""

    code = "timeout"
    retryable = True
    reason = DeadLetterReason.TIMEOUT
