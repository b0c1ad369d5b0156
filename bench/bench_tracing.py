"""What tracing and the audit trail cost on the spine: routed no-op tasks/s and sequential latency.

```
.venv/bin/python bench/bench_tracing.py [--tasks 5000] [--sequential 300] [--rounds 3]
    [--base-tree /tmp/loom-base] [--tree /tmp/loom-now] [--otlp-endpoint URL]
```

One nats-server; ``loom router`` + ``loom worker`` (no-op processor, 256 in flight) as subprocesses,
started afresh for each scenario, scenarios interleaved round by round (the machine's load drifts):

* **base** (with ``--base-tree``): the same roles from a ``git worktree`` of the commit before
  tracing and audit existed (``git worktree add --detach /tmp/loom-base <commit>``), put first on
  ``PYTHONPATH``;
* **off**: tracing off (no ``OTEL_*``: the no-op tracer) and ``LOOM_AUDIT=off``: the instrumentation
  present but disabled;
* **audit**: tracing off, audit on (the default);
* **traced** (with ``--otlp-endpoint``): every span exported over OTLP/HTTP to a collector (Jaeger
  from ``hack/tracing/build.sh``), audit off.

Tasks are published without a trace context, as a client without tracing does; with ``traced``
each role starts its spans from the delivery (the router's and the worker's spans per task).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.routed import latencies, run_batch
from tests.support.nats_server import NatsServer
from tests.support.processes import LoomProcess

from loom import tracing
from loom.bus import Bus
from loom.settings import NatsSettings


async def scenario(url: str, workdir: Path, env: dict[str, str], n: int, sequential: int) -> dict[str, float]:
    cfg = workdir / "noop-worker.yaml"
    cfg.write_text(
        "name: noop\nworker_kind: processor\nprocessing_backend: loom.contrib.noop.NoopBackend\n"
        "default_model_tier: local\nmax_in_flight: 256\n"
    )
    policy = workdir / "policy.yaml"
    policy.write_text("tenant_limits:\n  default: {}\n")
    procs = [
        LoomProcess(
            ["router", "--config", str(cfg), str(policy), "--log-level", "WARNING"], url, env
        ).start(),
        LoomProcess(
            ["worker", "--config", str(cfg), "--tier", "local", "--log-level", "WARNING"], url, env
        ).start(),
    ]
    try:
        for p in procs:
            p.wait_ready(60)
        bus = await Bus.connect(NatsSettings(url=url, name="bench"))
        await run_batch(bus, 500)  # warm-up
        throughput, lost = await run_batch(bus, n)
        timing = await latencies(bus, sequential)
        await bus.close()
        return {"throughput": throughput, "lost": lost, **timing}
    finally:
        for p in procs:
            p.terminate(30)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=5000)
    ap.add_argument("--sequential", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--base-tree", help="a git worktree of the commit before tracing and audit")
    ap.add_argument("--otlp-endpoint", help="OTLP/HTTP collector for the traced scenario")
    ap.add_argument(
        "--with-context",
        action="store_true",
        help="publish every task inside a trace (traceparent and baggage headers), as loom submit does",
    )
    ap.add_argument("--base-last", action="store_true", help="run the base scenario last in each round")
    ap.add_argument(
        "--tree", help="a git worktree of the code to measure (default: this checkout, as it is on disk)"
    )
    args = ap.parse_args()
    clean = {k: "" for k in os.environ if k.startswith("OTEL_")}
    if args.tree:
        clean["PYTHONPATH"] = f"{args.tree}/runtime"
    scenarios: dict[str, dict[str, str]] = {}
    base = {**clean, "PYTHONPATH": f"{args.base_tree}/runtime"} if args.base_tree else None
    if base is not None and not args.base_last:
        scenarios["base (before tracing and audit)"] = base
    scenarios["off: tracing off, audit off"] = {**clean, "LOOM_AUDIT": "off"}
    scenarios["audit: tracing off, audit on (default)"] = {**clean, "LOOM_AUDIT": "on"}
    if args.otlp_endpoint:
        scenarios["traced: every span exported, audit off"] = {
            **clean,
            "OTEL_EXPORTER_OTLP_ENDPOINT": args.otlp_endpoint,
            "LOOM_AUDIT": "off",
        }
    if base is not None and args.base_last:
        scenarios["base (before tracing and audit)"] = base
    server = NatsServer().start()
    workdir = Path(tempfile.mkdtemp(prefix="loom-bench-tracing-"))
    results: dict[str, list[dict[str, float]]] = {name: [] for name in scenarios}
    try:
        for _ in range(args.rounds):
            for name, env in scenarios.items():
                with tracing.root("bench") if args.with_context else contextlib.nullcontext():
                    run = await scenario(server.url, workdir, env, args.tasks, args.sequential)
                results[name].append(run)
    finally:
        server.cleanup()
    print(
        f"\ntracing/audit benchmark{' (tasks published inside a trace)' if args.with_context else ''}: "
        f"{args.tasks} no-op tasks, {args.sequential} sequential, "
        f"{args.rounds} rounds (median), {os.cpu_count()} cores\n"
    )
    print(f"{'scenario':<42}{'tasks/s':>10}{'lost':>6}{'p50 ms':>9}{'p99 ms':>9}   tasks/s per round")
    med: dict[str, float] = {}
    for name, runs in results.items():
        med[name] = statistics.median(r["throughput"] for r in runs)
        p50 = statistics.median(r["p50"] for r in runs)
        p99 = statistics.median(r["p99"] for r in runs)
        lost = sum(r["lost"] for r in runs)
        each = ", ".join(f"{r['throughput']:.0f}" for r in runs)
        print(f"{name:<42}{med[name]:>10.0f}{lost:>6.0f}{p50:>9.2f}{p99:>9.2f}   {each}")
    names = list(med)
    off = next(n for n in names if n.startswith("off"))
    print()
    for name in names:
        if name != off:
            print(f"{name.split(':')[0]} / off throughput: {med[name] / med[off]:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
