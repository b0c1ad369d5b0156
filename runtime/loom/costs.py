"""What a model call costs at a tier's price: one rule for the router's budgets and metrics and the
workers' audit records (a cached input token is never priced as a fresh one)."""

from __future__ import annotations

import math

from loom.api.router_policy import TierPrice
from loom.messages import TokenUsage

#: Cost units per unit of currency (budget counters hold integers).
COST_SCALE = 1_000_000
#: Price multipliers when a tier names no cache rate (see :class:`TierPrice`).
CACHE_READ_FACTOR = 0.1
CACHE_WRITE_FACTOR = 1.25


def cost_micros(price: TierPrice, usage: TokenUsage) -> int:
    """What ``usage`` costs at ``price``, in millionths of the currency (rounded up)."""
    fresh = price.input_per_million
    read = fresh * CACHE_READ_FACTOR if price.cache_read_per_million is None else price.cache_read_per_million
    write = price.cache_write_per_million
    write = fresh * CACHE_WRITE_FACTOR if write is None else write
    per_million = (
        usage.prompt_tokens * fresh
        + usage.completion_tokens * price.output_per_million
        + usage.cache_read_tokens * read
        + usage.cache_write_tokens * write
    )
    return math.ceil(per_million - 1e-9)  # per million tokens x tokens / 1e6 x COST_SCALE = per_million


def cost(price: TierPrice, usage: TokenUsage) -> float:
    """What ``usage`` costs at ``price``, in the currency."""
    return cost_micros(price, usage) / COST_SCALE
