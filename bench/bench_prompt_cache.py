"""Input tokens billed at the full rate per task, prompt caching off vs on, for one LLM worker.

The worker has a ~2,000-token stable prefix (a system prompt and a knowledge file, plus the
``respond`` tool its output schema becomes) and gets 100 tasks with different payloads. Each task
runs through the real ``LLMEngine`` and the real Anthropic provider (the official SDK over HTTP) on
a tier with ``promptCaching`` false, then true, against the fake Anthropic server applying
Anthropic's documented caching rules (breakpoints, minimum cacheable length, prefix match, TTL).
Tokens are counted by the fake server (about four characters per token), as the usage each result
reports.

Figures per setting: input tokens per task (all), at the full rate, read from the cache, written
to it; the share of input tokens read from the cache after the first task; and the input cost
relative to caching off at Anthropic's multipliers (cache write 1.25x, cache read 0.1x).

Run: ``.venv/bin/python -m bench.bench_prompt_cache [--tasks 100] [--concurrency 1]``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from tests.fakes.llm_server import FakeLLMServer, Reply
from tests.fakes.virtual_time import VirtualSleep
from tests.support.endpoints import loopback_allowed

from loom.api.router_policy import TierDefinition
from loom.api.worker import WorkerSpec
from loom.llm.factory import build_model_client
from loom.messages import TaskMessage, TokenUsage
from loom.worker.llm_engine import LLMEngine

#: Anthropic's price multipliers of the base input rate (five-minute cache).
WRITE_RATE, READ_RATE = 1.25, 0.1


def prefix_texts() -> tuple[str, str]:
    """A ~1,000-token system prompt and a ~1,000-token knowledge file."""
    prompt = "You triage customer support tickets for an online bookshop. " + " ".join(
        f"Rule {i}: when a ticket mentions topic {i}, label it with the queue that owns topic {i}."
        for i in range(45)
    )
    knowledge = "\n".join(
        f"- Queue q{i}: orders, refunds and delivery questions of region {i}; escalate after 48 hours."
        for i in range(45)
    )
    return prompt, knowledge


def worker(base: Path) -> WorkerSpec:
    prompt, knowledge = prefix_texts()
    (base / "queues.md").write_text(knowledge)
    return WorkerSpec(
        name="triage",
        system_prompt=prompt,
        input_schema={"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
        output_schema={
            "type": "object",
            "required": ["queue"],
            "properties": {"queue": {"type": "string"}},
        },
        knowledge_sources=[{"path": "queues.md"}],
        max_input_tokens=8000,
    )


async def run(caching: bool, tasks: int, concurrency: int, delay: float, base: Path) -> list[TokenUsage]:
    """Usage of each task, in order, on a fresh fake server (an empty cache)."""
    async with FakeLLMServer("anthropic", prompt_cache=True, record=False, delay=delay) as fake:
        fake.default = lambda _: Reply(json={"queue": "q1"}, completion_tokens=8)
        tier = TierDefinition(
            name="standard", backend="anthropic", model="claude-x", base_url=fake.url, prompt_caching=caching
        )
        env = {"ANTHROPIC_API_KEY": "sk-ant-bench"} | loopback_allowed(fake.url)
        client = build_model_client(tier, env=env, sleep=VirtualSleep())
        engine = LLMEngine(worker(base), tier, provider=client, base_dir=base, env=env)
        await engine.start()
        usages: list[TokenUsage] = []
        for start in range(0, tasks, concurrency):
            batch = [
                TaskMessage(
                    worker_type="triage", payload={"text": f"Ticket {i}: where is my order #{1000 + i}?"}
                )
                for i in range(start, min(start + concurrency, tasks))
            ]
            outcomes = await asyncio.gather(*(engine.run(t) for t in batch))
            usages += [o.token_usage for o in outcomes]
        await engine.close()
        return usages


def cost(u: TokenUsage) -> float:
    """Input cost in units of the full input rate."""
    return u.prompt_tokens + WRITE_RATE * u.cache_write_tokens + READ_RATE * u.cache_read_tokens


def summary(usages: list[TokenUsage]) -> dict[str, float]:
    n = len(usages)
    total = sum(usages, TokenUsage())
    rest = sum(usages[1:], TokenUsage())
    return {
        "input": total.input_tokens / n,
        "full": total.prompt_tokens / n,
        "read": total.cache_read_tokens / n,
        "write": total.cache_write_tokens / n,
        "first_full": usages[0].prompt_tokens,
        "cached_after_first": rest.cache_read_tokens / rest.input_tokens if rest.input_tokens else 0.0,
        "misses": sum(1 for u in usages if u.cache_read_tokens == 0),
        "cost": sum(cost(u) for u in usages),
    }


async def main_async(tasks: int, concurrency: int, delay: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        off = summary(await run(False, tasks, concurrency, delay, base))
        on = summary(await run(True, tasks, concurrency, delay, base))
    print(f"{tasks} tasks, {concurrency} at a time, answers after {delay} s; tokens per task (mean)")
    print(
        "| caching | input | at full rate | cache read | cache write | read from cache after task 1 "
        "| input cost |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, s in (("off", off), ("on", on)):
        print(
            f"| {name} | {s['input']:,.0f} | {s['full']:,.1f} | {s['read']:,.0f} | {s['write']:,.1f} "
            f"| {s['cached_after_first']:.1%} | {s['cost'] / off['cost']:.3f} |"
        )
    print(f"full-rate tokens per task, on / off: {on['full'] / off['full']:.3f}")
    print(f"tasks that read nothing from the cache: off {off['misses']:.0f}, on {on['misses']:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=1, help="tasks sent together")
    parser.add_argument("--delay", type=float, default=0.02, help="seconds the fake takes to answer")
    args = parser.parse_args()
    asyncio.run(main_async(args.tasks, args.concurrency, args.delay))


if __name__ == "__main__":
    main()
