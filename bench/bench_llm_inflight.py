"""Model calls in flight in one LLM worker process, against a fake provider that answers after 500 ms.

Everything runs for real: nats-server, the fake OpenAI-compatible provider (its own
process, aiohttp), and ``loom worker`` (its own process) with ``maxInFlight`` 256.
Tasks go straight to ``loom.tasks.bench.standard``; results are counted on
``loom.results.>``. Figures:

- tasks/s over the run, and the most calls the provider saw open at once;
- ratio against the ceiling measured in the same run's setup: ``max_in_flight /
  answer_delay`` (what a worker with no overhead would do); 1.0 = the worker adds nothing.

Run: ``.venv/bin/python -m bench.bench_llm_inflight [--tasks 3000] [--delay 0.5] [--in-flight 256]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


async def run(tasks: int, delay: float, in_flight: int) -> dict[str, float]:
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

        def on_result(body: bytes) -> None:
            nonlocal count, failed
            count += 1
            if b'"status":"failed"' in body:
                failed += 1
            if count >= tasks:
                done.set()

        await bus.subscribe_all_results(on_result)
        subject = task_subject("bench", "standard")
        started = time.perf_counter()
        for i in range(tasks):
            await bus.publish_task(
                TaskMessage(worker_type="bench", payload={"text": f"t{i}"}), subject=subject
            )
        await asyncio.wait_for(done.wait(), timeout=tasks * delay + 120)
        elapsed = time.perf_counter() - started
        async with httpx.AsyncClient() as http:
            stats = (await http.get(f"http://127.0.0.1:{fake_port}/_stats")).json()
    finally:
        await bus.close()
        worker.terminate()
        worker.wait(30)
        fake.terminate()
        fake.wait(10)
        nats.cleanup()
    ceiling = stats["max_in_flight"] / delay
    rate = tasks / elapsed
    return {
        "tasks": tasks,
        "failed": failed,
        "seconds": round(elapsed, 2),
        "tasks_per_s": round(rate, 1),
        "max_calls_in_flight": stats["max_in_flight"],
        "ceiling_tasks_per_s": round(ceiling, 1),
        "ratio_to_ceiling": round(rate / ceiling, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--delay", type=float, default=0.5)
    parser.add_argument("--in-flight", type=int, default=256)
    args = parser.parse_args()
    result = asyncio.run(run(args.tasks, args.delay, args.in_flight))
    print(json.dumps(result, indent=2))
    if result["max_calls_in_flight"] < 200:
        print("FAIL: fewer than 200 model calls were in flight at once", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
