"""What replicated streams cost: routed no-op tasks/s on one nats-server (R1) vs a 3-node JetStream
cluster with every stream replicated three times (R3), in the same run.

    .venv/bin/python bench/bench_cluster.py [--tasks 3000] [--sequential 300] [--rounds 2]

Each scenario runs ``loom router`` + a no-op ``loom worker`` (subprocesses) on a fresh server or
cluster: N tasks published durably to the router's input, results counted on ``loom.results.<key>``
(lost = N - distinct results), then tasks one at a time for p50/p99 latency. Scenarios alternate
over the rounds and the best round of each is kept. Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.routed import latencies, run_batch  # noqa: E402
from tests.support.nats_cluster import NatsCluster  # noqa: E402
from tests.support.nats_server import NatsServer  # noqa: E402
from tests.support.processes import LoomProcess  # noqa: E402

from loom.bus import Bus  # noqa: E402
from loom.settings import NatsSettings  # noqa: E402


async def routed(url: str, replicas: int, n: int, sequential: int, workdir: Path) -> dict[str, float]:
    """Throughput, lost and latency of routed no-op tasks with streams of ``replicas`` replicas."""
    cfg = workdir / "noop-worker.yaml"
    cfg.write_text(
        "name: noop\nworker_kind: processor\nprocessing_backend: loom.contrib.noop.NoopBackend\n"
        "default_model_tier: local\nmax_in_flight: 256\n"
    )
    policy = workdir / "policy.yaml"  # the spine, not the limiter (as in bench_spine.py)
    policy.write_text("tenant_limits:\n  default: {}\n")
    env = {"LOOM_NATS_REPLICAS": str(replicas)}
    bus = await Bus.connect(NatsSettings(url=url, name="bench", replicas=replicas))
    procs = [
        LoomProcess(["router", "--config", str(cfg), str(policy), "--log-level", "WARNING"], url, env),
        LoomProcess(["worker", "--config", str(cfg), "--tier", "local", "--log-level", "WARNING"], url, env),
    ]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.wait_ready(60)

        await run_batch(bus, 300)  # warm-up
        throughput, lost = await run_batch(bus, n)
        return {"throughput": throughput, "lost": lost, **await latencies(bus, sequential)}
    finally:
        await bus.close()
        for p in procs:
            p.terminate(30)
            p.cleanup()


async def one_server(n: int, sequential: int) -> dict[str, float]:
    server = NatsServer().start()
    try:
        return await routed(server.url, 1, n, sequential, Path(tempfile.mkdtemp(prefix="loom-bench-")))
    finally:
        server.cleanup()


async def three_nodes(n: int, sequential: int) -> dict[str, float]:
    cluster = NatsCluster().start()
    try:
        return await routed(cluster.url, 3, n, sequential, Path(tempfile.mkdtemp(prefix="loom-bench-")))
    finally:
        cluster.cleanup()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=3000)
    ap.add_argument("--sequential", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    best: dict[str, dict[str, float]] = {}
    for _ in range(args.rounds):
        for name, scenario in (("R1, one server", one_server), ("R3, 3-node cluster", three_nodes)):
            r = await scenario(args.tasks, args.sequential)
            if name not in best or r["throughput"] > best[name]["throughput"]:
                best[name] = r
    print(
        f"\nreplication benchmark: {args.tasks} routed no-op tasks, {args.sequential} sequential, "
        f"best of {args.rounds}, {os.cpu_count()} cores (all servers and processes on this machine)\n"
    )
    print(f"{'scenario':<24}{'tasks/s':>10}{'lost':>7}{'p50 ms':>9}{'p99 ms':>9}")
    for name, r in best.items():
        print(f"{name:<24}{r['throughput']:>10.0f}{r['lost']:>7.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}")
    r1, r3 = best["R1, one server"], best["R3, 3-node cluster"]
    print(f"\nR3 / R1 throughput: {r3['throughput'] / r1['throughput']:.2f}")
    print(f"R3 / R1 p50 latency: {r3['p50'] / r1['p50']:.2f}  (lower is better)")


if __name__ == "__main__":
    asyncio.run(main())
