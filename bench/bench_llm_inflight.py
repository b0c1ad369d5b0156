"""Model calls in flight in one LLM worker process, against a fake provider that answers after 500 ms.

Everything runs for real: nats-server, the fake OpenAI-compatible provider (its own
process, aiohttp), and ``loom worker`` (its own process) with ``maxInFlight`` 256.
Tasks go straight to ``loom.tasks.bench.standard``; results are counted on
``loom.results.>``. Figures:

- tasks/s over the run, and the most calls the provider saw open at once;
- ratio against the ceiling measured in the same run's setup: ``max_in_flight /
  answer_delay`` (what a worker with no overhead would do); 1.0 = the worker adds nothing;
- the worker process's CPU time per task over the run (user + system, from ``/proc``), also as
  a multiple of the fake provider's (unchanged code: a control for how busy the machine was);
- the steady rate: results/s between the first and the last 15% of the results, once every
  slot is busy and before the last, partly empty wave;
- ratio against a bare aiohttp client keeping as many calls open to the same fake in the same
  run (no NATS, no worker): on a busy machine the fake provider and loopback themselves stay
  below the ceiling, and this says how much of the gap the worker adds.

With ``--baseline-src DIR`` (another checkout's ``runtime/``, e.g. from
``git archive <commit> runtime | tar -x -C /tmp/base``) the worker runs from that source and
from this one, alternated over ``--rounds``, each on a fresh nats-server and fake provider,
so both are measured on the same machine in the same run.

Run: ``.venv/bin/python -m bench.bench_llm_inflight [--tasks 3000] [--delay 0.5] [--in-flight 256]
[--baseline-src DIR --rounds 2]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import yaml
from tests.support.nats_server import NatsServer, free_port

from loom.api.router_policy import TierDefinition
from loom.bus import Bus
from loom.messages import TaskMessage
from loom.settings import NatsSettings
from loom.subjects import task_subject

WORKER = {
    "name": "bench",
    "systemPrompt": "Label the text.",
    "inputSchema": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
    "outputSchema": {"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}},
    "timeoutSeconds": 30,
}


def start_fake(port: int, delay: float) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.llm_server",
            "--kind",
            "openai",
            "--port",
            str(port),
            "--delay",
            str(delay),
        ],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("READY"):
        raise RuntimeError(f"fake provider did not start: {line!r}")
    return proc


async def wait_bound(bus: Bus, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            await bus.consumer_info("LOOM_TASKS", "worker-bench-standard")
            return
        except Exception:
            await asyncio.sleep(0.1)
    raise RuntimeError("worker did not create its consumer")


async def raw_calls(url: str, calls: int, in_flight: int) -> float:
    """Calls/s of a bare aiohttp client keeping ``in_flight`` calls open to the fake (no NATS, no
    worker): what this machine's fake provider and loopback allow in this run."""
    body = json.dumps({"model": "fake", "messages": [{"role": "user", "content": "t"}]}).encode()
    slots = asyncio.Semaphore(in_flight)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=in_flight)) as session:

        async def one() -> None:
            async with slots, session.post(url, data=body, headers={"content-type": "application/json"}) as r:
                await r.read()

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(calls)))
        return calls / (time.perf_counter() - started)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux ``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has been busy so far, all processes (``/proc/stat``)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU used over a window by the processes of one run and by the whole machine."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.start = {name: cpu_seconds(pid) for name, pid in pids.items()}
        self.self_start = time.process_time()
        self.machine_start = machine_busy_seconds()
        self.wall_start = time.perf_counter()

    def per_item_ms(self, items: int) -> dict[str, float]:
        """Milliseconds of CPU per item of each process (``bench``: this process), and the cores the
        machine kept busy over the window (``machine_busy_cores``, everything running on it)."""
        out = {
            f"{name}_cpu_ms": (cpu_seconds(pid) - self.start[name]) / items * 1000
            for name, pid in self.pids.items()
        }
        out["bench_cpu_ms"] = (time.process_time() - self.self_start) / items * 1000
        wall = time.perf_counter() - self.wall_start
        out["machine_busy_cores"] = (machine_busy_seconds() - self.machine_start) / wall
        return {k: round(v, 3) for k, v in out.items()}


def steady_rate(arrivals: list[float], edge: float = 0.15) -> float:
    """Results/s between the first and the last ``edge`` of the results: the rate once every slot
    is busy and before the last partial wave, which is what the ceiling (``max_in_flight /
    delay``) describes. Over the whole run even a worker with no overhead stays below the ceiling:
    its first calls start as the tasks are published and its last wave is partly empty."""
    first, last = int(len(arrivals) * edge), int(len(arrivals) * (1 - edge))
    return (last - first) / (arrivals[last] - arrivals[first])


def start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid`` into collapsed stacks (``out``) until it is interrupted."""
    beside = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen(
        [
            str(beside) if beside.exists() else "py-spy",
            *("record", "--pid", str(pid), "--format", "raw", "--output", str(out), "--nonblocking"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def run(
    tasks: int, delay: float, in_flight: int, src: str | None = None, profile: Path | None = None
) -> dict[str, float]:
    nats = NatsServer().start()
    fake_port = free_port()
    fake = start_fake(fake_port, delay)
    workdir = Path(tempfile.mkdtemp(prefix="loom-bench-llm-"))
    config = workdir / "worker.yaml"
    config.write_text(yaml.safe_dump(WORKER | {"maxInFlight": in_flight}))
    tier = TierDefinition(
        name="standard",
        backend="openai",
        model="fake",
        base_url=f"http://127.0.0.1:{fake_port}/v1",
        timeout_seconds=30,
    )
    env = {
        **os.environ,
        "LOOM_TIER_CONFIG": tier.model_dump_json(),
        "LOOM_NATS_URL": nats.url,
        "LOOM_METRICS_PORT": "-1",
        "LOOM_LOG_LEVEL": "WARNING",
        # the fake model runs on loopback: local mode, with its origin listed
        "LOOM_LOCAL_MODE": "1",
        "LOOM_MODEL_ENDPOINTS": json.dumps({"allowedUrls": [f"http://127.0.0.1:{fake_port}"]}),
    }
    if src:
        env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    worker = subprocess.Popen(  # noqa: ASYNC220 - started once, before measuring
        [sys.executable, "-m", "loom.cli.main", "worker", "--config", str(config), "--tier", "standard"],
        env=env,
    )
    bus = await Bus.connect(NatsSettings(url=nats.url, name="bench-llm"))
    try:
        await wait_bound(bus)
        done = asyncio.Event()
        count = 0
        failed = 0
        arrivals: list[float] = []

        def on_result(body: bytes) -> None:
            nonlocal count, failed
            count += 1
            arrivals.append(time.perf_counter())
            if b'"status":"failed"' in body:
                failed += 1
            if count >= tasks:
                done.set()

        await bus.subscribe_all_results(on_result)
        subject = task_subject("bench", "standard")
        profiler = start_profiler(worker.pid, profile) if profile else None
        assert nats.proc is not None
        meter = CpuMeter({"worker": worker.pid, "fake": fake.pid, "nats": nats.proc.pid})
        started = time.perf_counter()
        for i in range(tasks):
            await bus.publish_task(
                TaskMessage(worker_type="bench", payload={"text": f"t{i}"}), subject=subject
            )
        published = time.perf_counter() - started
        await asyncio.wait_for(done.wait(), timeout=tasks * delay + 120)
        elapsed = time.perf_counter() - started
        shares = meter.per_item_ms(tasks)
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(60)
        async with httpx.AsyncClient() as http:
            stats = (await http.get(f"http://127.0.0.1:{fake_port}/_stats")).json()
        raw_meter = CpuMeter({"fake": fake.pid})
        raw_rate = await raw_calls(f"http://127.0.0.1:{fake_port}/v1/chat/completions", tasks, in_flight)
        raw_shares = raw_meter.per_item_ms(tasks)
    finally:
        await bus.close()
        worker.terminate()
        worker.wait(30)
        fake.terminate()
        fake.wait(10)
        nats.cleanup()
    ceiling = stats["max_in_flight"] / delay
    rate = tasks / elapsed
    steady = steady_rate(arrivals)
    return {
        "tasks": tasks,
        "failed": failed,
        "seconds": round(elapsed, 2),
        "publish_seconds": round(published, 2),
        "tasks_per_s": round(rate, 1),
        "max_calls_in_flight": stats["max_in_flight"],
        "ceiling_tasks_per_s": round(ceiling, 1),
        "ratio_to_ceiling": round(rate / ceiling, 3),
        "steady_tasks_per_s": round(steady, 1),
        "steady_ratio_to_ceiling": round(steady / ceiling, 3),
        "raw_calls_per_s": round(raw_rate, 1),
        "ratio_to_raw": round(rate / raw_rate, 3),
        "worker_cpu_ms_per_task": shares["worker_cpu_ms"],
        # CPU per task of the other parts of the run, and of the bare client's run
        "fake_cpu_ms_per_task": shares["fake_cpu_ms"],
        # the fake's code is the same in every run: the worker's CPU against it discounts how busy
        # the machine was (with more calls overlapping, every process here spends more per call)
        "worker_cpu_per_fake_cpu": round(shares["worker_cpu_ms"] / shares["fake_cpu_ms"], 2),
        "nats_cpu_ms_per_task": shares["nats_cpu_ms"],
        "bench_cpu_ms_per_task": shares["bench_cpu_ms"],
        "machine_busy_cores": shares["machine_busy_cores"],
        "raw_fake_cpu_ms_per_call": raw_shares["fake_cpu_ms"],
        "raw_client_cpu_ms_per_call": raw_shares["bench_cpu_ms"],
        "raw_machine_busy_cores": raw_shares["machine_busy_cores"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--delay", type=float, default=0.5)
    parser.add_argument("--in-flight", type=int, default=256)
    parser.add_argument("--baseline-src", help="a runtime/ source tree to measure against, same run")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each configuration, alternated")
    parser.add_argument(
        "--profile",
        type=Path,
        help="a directory: py-spy samples the worker during each run (collapsed stacks, one file per run)",
    )
    args = parser.parse_args()
    sources = {"this": None} | ({"baseline": args.baseline_src} if args.baseline_src else {})
    results: dict[str, list[dict[str, float]]] = {name: [] for name in sources}
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    for round_no in range(args.rounds):
        for name, src in sources.items():
            profile = args.profile / f"{name}-{round_no}.txt" if args.profile else None
            result = asyncio.run(run(args.tasks, args.delay, args.in_flight, src, profile))
            print(json.dumps({"worker": name} | result), flush=True)
            results[name].append(result)
    best = {name: max(rs, key=lambda r: r["ratio_to_ceiling"]) for name, rs in results.items()}
    print(json.dumps({"best": best}, indent=2))
    if "baseline" in best:
        this, base = best["this"], best["baseline"]
        cpu = this["worker_cpu_ms_per_task"] / base["worker_cpu_ms_per_task"]
        print(
            f"ratio to ceiling: this {this['ratio_to_ceiling']:.3f}, "
            f"baseline {base['ratio_to_ceiling']:.3f}; "
            f"CPU per task this / baseline {cpu:.2f}"
        )
    if best["this"]["max_calls_in_flight"] < 200:
        print("FAIL: fewer than 200 model calls were in flight at once", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
