"""Benchmark of the runtime spine against raw nats-py JetStream and the original Loom, on one nats-server.

    .venv/bin/python bench/bench_spine.py [--tasks 5000] [--sequential 500]

Measures, in one run:
  1. raw nats-py JetStream: publish -> pull -> ack throughput (the ceiling for a durable design);
  2. ours: router + no-op processor worker as subprocesses; N tasks submitted durably to
     loom.tasks.incoming, results counted on loom.results.<key>; throughput, lost, and
     p50/p99 latency of tasks sent one at a time;
  3. the original Loom (loom-ai 0.9.0 in its own venv under ~/.cache/loom/bench-loom-ai):
     its ``loom router`` + ``loom processor`` with a no-op backend, the same work.
Prints a table and the ratios ours/original. Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402
from bench.routed import latencies, pct, run_batch  # noqa: E402
from nats.js import api as js_api  # noqa: E402
from tests.support.nats_server import NatsServer  # noqa: E402
from tests.support.processes import LoomProcess  # noqa: E402

from loom.bus import Bus  # noqa: E402
from loom.messages import TaskMessage  # noqa: E402
from loom.settings import NatsSettings  # noqa: E402
from loom.subjects import TASKS_INCOMING  # noqa: E402

LOOM_AI_VENV = Path.home() / ".cache" / "loom" / "bench-loom-ai"
LOOM_AI_VERSION = "0.9.0"


def ensure_loom_ai() -> Path:
    """loom-ai in its own venv (its package is also called ``loom``)."""
    exe = LOOM_AI_VENV / "bin" / "loom"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(LOOM_AI_VENV)], check=True)
        subprocess.run(
            [str(LOOM_AI_VENV / "bin" / "pip"), "install", "-q", f"loom-ai=={LOOM_AI_VERSION}"], check=True
        )
    return exe


# -- 1. raw nats-py JetStream ------------------------------------------------------------------------------


async def bench_raw(url: str, n: int) -> dict[str, float]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(
        name="BENCH_RAW",
        subjects=["bench.raw"],
        retention=js_api.RetentionPolicy.WORK_QUEUE,
        storage=js_api.StorageType.FILE,
    )
    psub = await js.pull_subscribe("bench.raw", durable="bench", stream="BENCH_RAW")
    body = TaskMessage(worker_type="noop", model_tier="local", parent_task_id="raw").to_bytes()
    done = asyncio.Event()
    last = 0.0

    async def publish() -> None:
        for start in range(0, n, 500):
            await asyncio.gather(*(js.publish("bench.raw", body) for _ in range(min(500, n - start))))

    async def consume() -> None:
        nonlocal last
        got = 0
        while got < n:
            try:
                msgs = await psub.fetch(256, timeout=0.05)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            for m in msgs:
                await m.ack()
            got += len(msgs)
            last = time.perf_counter()
        done.set()

    t0 = time.perf_counter()
    await asyncio.gather(publish(), consume())
    await nc.close()
    return {"throughput": n / (last - t0)}


# -- 2. ours ---------------------------------------------------------------------------------------------


async def bench_ours(url: str, n: int, sequential: int, workdir: Path) -> dict[str, float]:
    cfg = workdir / "noop-worker.yaml"
    cfg.write_text(
        "name: noop\nworker_kind: processor\nprocessing_backend: loom.contrib.noop.NoopBackend\n"
        "default_model_tier: local\nmax_in_flight: 256\n"
    )
    # The spine, not the limiter: tenant limits (on by default) off, as the baselines have none.
    policy = workdir / "policy.yaml"
    policy.write_text("tenant_limits:\n  default: {}\n")
    procs = [
        LoomProcess(
            ["router", "--config", str(cfg), str(policy), "--log-level", "WARNING"], url
        ).start(),
        LoomProcess(
            ["worker", "--config", str(cfg), "--tier", "local", "--log-level", "WARNING"], url
        ).start(),
    ]
    try:
        for p in procs:
            p.wait_ready()
        bus = await Bus.connect(NatsSettings(url=url, name="bench"))

        await run_batch(bus, 500)  # warm-up
        throughput, lost = await run_batch(bus, n)
        timing = await latencies(bus, sequential)
        await bus.close()
        return {"throughput": throughput, "lost": lost, **timing}
    finally:
        for p in procs:
            p.terminate(30)


# -- 3. the original Loom --------------------------------------------------------------------------------


def _original_task(key: str) -> bytes:
    return json.dumps(
        {
            "task_id": uuid.uuid4().hex,
            "parent_task_id": key,
            "worker_type": "noop",
            "payload": {},
            "model_tier": "local",
            "priority": "normal",
        }
    ).encode()


async def bench_original(url: str, n: int, sequential: int, workdir: Path) -> dict[str, float]:
    exe = ensure_loom_ai()
    (workdir / "router.yaml").write_text("tier_overrides: {}\n")
    (workdir / "worker.yaml").write_text(
        "name: noop\nworker_kind: processor\nprocessing_backend: loom_ai_noop.NoopBackend\n"
        "default_model_tier: local\ninput_schema: {type: object}\noutput_schema: {type: object}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "bench")}
    env.pop("VIRTUAL_ENV", None)
    common = ["--nats-url", url, "--skip-preflight"]
    procs = [
        subprocess.Popen(  # noqa: ASYNC220 - started once, before timing
            [str(exe), "router", "--config", str(workdir / "router.yaml"), *common],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=workdir,
        ),
        subprocess.Popen(  # noqa: ASYNC220 - started once, before timing
            [str(exe), "processor", "--config", str(workdir / "worker.yaml"), "--tier", "local", *common],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=workdir,
        ),
    ]
    nc = await nats.connect(url)
    try:
        queue: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_result(msg: Any) -> None:
            queue.put_nowait(msg.data)

        # ready when a probe task comes back
        probe = await nc.subscribe("loom.results.probe", cb=on_result)
        deadline = time.monotonic() + 60
        while queue.empty():
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError("the original Loom did not start")
            await nc.publish(TASKS_INCOMING, _original_task("probe"))
            await asyncio.sleep(0.2)
        await probe.unsubscribe()
        await asyncio.sleep(0.5)
        while not queue.empty():
            queue.get_nowait()

        async def run_batch(count: int) -> tuple[float, int]:
            key = uuid.uuid4().hex
            sub = await nc.subscribe(f"loom.results.{key}", cb=on_result, pending_msgs_limit=1_000_000)
            await nc.flush()
            t0 = time.perf_counter()
            for _ in range(count):
                await nc.publish(TASKS_INCOMING, _original_task(key))
            await nc.flush()
            ids: set[str] = set()
            last = t0
            try:
                while len(ids) < count:
                    ids.add(json.loads(await asyncio.wait_for(queue.get(), 5))["task_id"])
                    last = time.perf_counter()
            except TimeoutError:
                pass
            await sub.unsubscribe()
            return count / (last - t0), count - len(ids)

        await run_batch(500)
        throughput, lost = await run_batch(n)

        key = uuid.uuid4().hex
        sub = await nc.subscribe(f"loom.results.{key}", cb=on_result)
        await nc.flush()
        lat: list[float] = []
        for _ in range(sequential):
            t = time.perf_counter()
            await nc.publish(TASKS_INCOMING, _original_task(key))
            await asyncio.wait_for(queue.get(), 10)
            lat.append((time.perf_counter() - t) * 1000)
        await sub.unsubscribe()
        return {"throughput": throughput, "lost": lost, "p50": statistics.median(lat), "p99": pct(lat, 0.99)}
    finally:
        await nc.close()
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=5000)
    ap.add_argument("--sequential", type=int, default=500)
    ap.add_argument("--skip-original", action="store_true")
    args = ap.parse_args()
    server = NatsServer().start()
    workdir = Path(tempfile.mkdtemp(prefix="loom-bench-"))
    try:
        raw = await bench_raw(server.url, args.tasks)
        ours = await bench_ours(server.url, args.tasks, args.sequential, workdir)
        orig = (
            None
            if args.skip_original
            else await bench_original(server.url, args.tasks, args.sequential, workdir)
        )
    finally:
        server.cleanup()
    print(
        f"\nspine benchmark: {args.tasks} no-op tasks, {args.sequential} sequential, one nats-server, "
        f"{os.cpu_count()} cores\n"
    )
    print(f"{'scenario':<44}{'tasks/s':>10}{'lost':>7}{'p50 ms':>9}{'p99 ms':>9}")
    print(
        f"{'raw nats-py JetStream publish->pull->ack':<44}{raw['throughput']:>10.0f}{'-':>7}{'-':>9}{'-':>9}"
    )
    rows = [("ours: router + worker (durable, acked)", ours)]
    if orig:
        rows.append((f"original loom-ai {LOOM_AI_VERSION} (core NATS, no acks)", orig))
    for name, r in rows:
        print(f"{name:<44}{r['throughput']:>10.0f}{r['lost']:>7.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}")
    print()
    print(f"ours / raw JetStream throughput:      {ours['throughput'] / raw['throughput']:.2f}")
    if orig:
        print(
            f"ours / original throughput:      {ours['throughput'] / orig['throughput']:.2f} (target >= 1)"
        )
        print(f"ours / original p50 latency:          {ours['p50'] / orig['p50']:.2f}  (lower is better)")
    print(f"ours p50 sequential latency:          {ours['p50']:.2f} ms  (target <= 2 ms)")


if __name__ == "__main__":
    asyncio.run(main())
