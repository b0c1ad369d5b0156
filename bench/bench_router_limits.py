"""Throughput of routed no-op tasks under the router's limits: none, local, shared, on one nats-server.

    .venv/bin/python bench/bench_router_limits.py [--tasks 5000] [--rounds 2]

Each scenario runs ``loom router`` and a no-op ``loom worker`` (256 in flight) as subprocesses and
pushes N tasks through them (published durably to loom.tasks.incoming, results counted):

  1. no limits: a RouterPolicy with no rate limits and the default tenant limit turned off
     (``tenant_limits.default: {}``), so no limit set is built at all;
  2. local limiter: requests/min, tokens/min and max in flight on the tier, far above what the
     run reaches (the cost of the limiter, not of waiting), kept by the router process alone;
  3. shared limiter: the same limits kept in the Key-Value bucket (``--limits shared``), one router;
  4. shared limiter, two routers (informational: the same tasks split over two replicas);
  5. a token budget on the tier (no rate limits): each task reserved in the budgets' Key-Value
     bucket before dispatch and settled from its result, one compare-and-set each way.

Scenarios alternate over ``--rounds`` rounds and the best of each is kept (other work on the machine
only ever slows a run down). Prints tasks/s, shared/local (target >= 0.8) and budget/no limits.
Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.routed import run_batch  # noqa: E402
from tests.support.nats_server import NatsServer  # noqa: E402
from tests.support.processes import LoomProcess  # noqa: E402

from loom.bus import Bus  # noqa: E402
from loom.settings import NatsSettings  # noqa: E402

WORKER = (
    "name: noop\nworker_kind: processor\nprocessing_backend: loom.contrib.noop.NoopBackend\n"
    "default_model_tier: local\nmax_in_flight: 256\n"
)
NO_LIMITS = "tenant_limits:\n  default: {}\n"
LIMITS = (
    "tenant_limits:\n  default: {}\n"
    "rate_limits:\n  local:\n    requests_per_minute: 100000000\n    tokens_per_minute: 1000000000000\n"
    "    max_concurrent: 100000\n"
)

BUDGET = NO_LIMITS + "budgets:\n  tiers:\n    local:\n      tokens_per_day: 1000000000000\n"

SCENARIOS: list[tuple[str, str, tuple[str, ...], int]] = [
    ("no limits", NO_LIMITS, (), 1),
    ("local limiter", LIMITS, ("--limits", "local"), 1),
    ("shared limiter (KV)", LIMITS, ("--limits", "shared"), 1),
    ("shared limiter (KV), 2 routers", LIMITS, ("--limits", "shared"), 2),
    ("token budget (KV)", BUDGET, (), 1),
]


async def run_scenario(
    url: str, workdir: Path, policy: str, extra: tuple[str, ...], routers: int, n: int
) -> float:
    cfg = workdir / "noop-worker.yaml"
    cfg.write_text(WORKER)
    pol = workdir / f"policy-{uuid.uuid4().hex[:6]}.yaml"
    pol.write_text(policy)
    quiet = ("--log-level", "WARNING")
    procs = [
        LoomProcess(["router", "--config", str(cfg), str(pol), *extra, *quiet], url).start()
        for _ in range(routers)
    ]
    procs.append(LoomProcess(["worker", "--config", str(cfg), "--tier", "local", *quiet], url).start())
    try:
        for p in procs:
            p.wait_ready()
        bus = await Bus.connect(NatsSettings(url=url, name="bench"))
        try:
            await push(bus, 500)  # warm-up
            return await push(bus, n)
        finally:
            await bus.close()
    finally:
        for p in procs:
            p.terminate(30)
            p.cleanup()


async def push(bus: Bus, count: int) -> float:
    """Tasks/s from the first publish to the last result (0 when a result was lost)."""
    throughput, lost = await run_batch(bus, count, result_timeout=15)
    return 0.0 if lost else throughput


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    best: dict[str, float] = {}
    runs: dict[str, list[float]] = {}
    workdir = Path(tempfile.mkdtemp(prefix="loom-bench-limits-"))
    for _ in range(args.rounds):
        for name, policy, extra, routers in SCENARIOS:
            server = NatsServer().start()  # a fresh server each: no stream or bucket carried over
            try:
                rate = await run_scenario(server.url, workdir, policy, extra, routers, args.tasks)
            finally:
                server.cleanup()
            runs.setdefault(name, []).append(rate)
            best[name] = max(best.get(name, 0.0), rate)
    print(
        f"\nrouter limits benchmark: {args.tasks} no-op tasks, best of {args.rounds}, "
        f"{os.cpu_count()} cores\n"
    )
    print(f"{'scenario':<34}{'tasks/s':>10}   runs")
    for name, *_ in SCENARIOS:
        print(f"{name:<34}{best[name]:>10.0f}   {', '.join(f'{r:.0f}' for r in runs[name])}")
    print()
    local, shared, none = best["local limiter"], best["shared limiter (KV)"], best["no limits"]
    print(f"shared / local:      {shared / local:.2f}  (target >= 0.8)")
    print(f"local / no limits:   {local / none:.2f}")
    print(f"shared / no limits:  {shared / none:.2f}")
    print(f"budget / no limits:  {best['token budget (KV)'] / none:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
