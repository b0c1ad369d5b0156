"""The ``make run`` sample goal end to end in local mode, the embedded model's old settings vs new.

Each configuration runs what ``make run`` runs, for real: ``loom up config/samples`` (embedded
NATS, the llama.cpp server with SmolLM2-135M, router, workers, pipeline), waits until every
process is ready, submits the sample document to the ``doc-analysis`` pipeline with ``loom
submit --wait`` and stops. Figures per configuration: seconds until ready, seconds from submit to
the goal's result, whether it completed, each stage's seconds from the timeline ``loom submit``
prints, and how many model servers ran.

- **new**: this source tree's ``loom up`` (its own settings, see ``loom.llm.llama_settings``:
  batch of 512, as many servers as the pipeline runs stages at once, up to the cores, each with
  its share of the threads, behind one balancing address);
- **one-server**: the same with ``LOOM_LOCAL_SERVERS=1`` (what the servers alone bring);
- **old**: this tree with the old server settings given as environment (``--old-env``, default:
  one server with a batch of one token, a thread per core waiting actively, no prompt cache);
- **old-batch-512**: the same with a batch of 512 (what ``loom up`` itself ran before the change;
  the one-token batch was ``loom eval``'s and the tests' server);
- **old-tree**: ``loom up`` from another source tree (``--baseline-src``, e.g. the commit before
  the change: ``git archive <commit> runtime | tar -x -C /tmp/base`` then ``--baseline-src
  /tmp/base/runtime``), as it ran then.

The configurations alternate over ``--rounds``; ratio = a configuration's goal seconds / new goal
seconds, per round and from each configuration's best round.

Run: ``.venv/bin/python -m bench.local_model [--baseline-src DIR] [--rounds 1] [--goal-timeout 600]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OLD_ENV = {
    "LOOM_LOCAL_SERVERS": "1",
    "LOOM_LOCAL_THREADS": str(os.cpu_count() or 1),
    "LOOM_LOCAL_N_BATCH": "1",
    "LOOM_LOCAL_PROMPT_CACHE": "0",
    "OMP_WAIT_POLICY": "ACTIVE",
}


def loom(*args: str) -> list[str]:
    return [sys.executable, "-m", "loom.cli.main", *args]


def run_goal(env: dict[str, str], ready_timeout: float, goal_timeout: float) -> dict[str, Any]:
    """One ``make run``: up, ready, submit and wait, stop."""
    run_dir = Path(tempfile.mkdtemp(prefix="loom-bench-local-"))
    up_log = run_dir / "up.log"
    started = time.perf_counter()
    with up_log.open("wb") as out:
        up = subprocess.Popen(
            loom(
                "up",
                "config/samples",
                "--no-view",
                "--run-dir",
                str(run_dir),
                "--nats-port",
                "0",
                "--nats-monitor-port",
                "0",
            ),
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        ready = subprocess.run(
            loom("status", "--run-dir", str(run_dir), "--wait-ready", str(int(ready_timeout))),
            cwd=ROOT,
            env=env,
            capture_output=True,
            check=False,
        )
        if ready.returncode != 0:
            raise RuntimeError(f"loom up not ready: {up_log.read_text()[-2000:]}")
        ready_s = time.perf_counter() - started
        state = json.loads((run_dir / "state.json").read_text())
        nats_url = state["nats_url"]
        servers = sum(1 for p in state.get("processes", []) if p.get("name", "").startswith("llm-local-"))
        submitted = time.perf_counter()
        goal = subprocess.run(
            loom(
                "submit",
                "Analyse this document",
                "--pipeline",
                "doc-analysis",
                "--context",
                "text=@config/samples/example.txt",
                "--wait",
                "--timeout",
                str(int(goal_timeout)),
                "--nats-url",
                nats_url,
                "--run-dir",
                str(run_dir),
            ),
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=goal_timeout + 60,
        )
        goal_s = time.perf_counter() - submitted
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
    # The timeline's rows: │ stage │ worker │ status │ attempts │ milliseconds │ ... │
    stage_s = {
        cells[0]: round(float(cells[4]) / 1000, 1)
        for line in goal.stdout.splitlines()
        if len(cells := [c.strip() for c in line.strip().strip("│").split("│")]) > 4
        and cells[0] in ("extract", "classify", "summarise", "report")
        and re.fullmatch(r"[\d.]+", cells[4])
    }
    return {
        "ready_s": round(ready_s, 1),
        "goal_s": round(goal_s, 1),
        "completed": goal.returncode == 0,
        "stage_s": stage_s,
        "llm_servers": max(servers, 1),
        "run_dir": str(run_dir),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline-src", help="a runtime/ source tree whose loom up runs as old-tree")
    parser.add_argument(
        "--old-env", default=json.dumps(OLD_ENV), help="old settings (without --baseline-src)"
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--configs", default="new,one-server,old,old-batch-512,old-tree", help="which configurations to run"
    )
    parser.add_argument("--ready-timeout", type=float, default=600)
    parser.add_argument("--goal-timeout", type=float, default=600)
    args = parser.parse_args()
    base = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_LOCAL_") and k != "OMP_WAIT_POLICY"}
    old = base | json.loads(args.old_env)
    configs = {
        "new": base,
        "one-server": base | {"LOOM_LOCAL_SERVERS": "1"},
        "old": old,
        # loom up's own settings before the change (the one-token batch was loom eval's and the tests')
        "old-batch-512": old | {"LOOM_LOCAL_N_BATCH": "512"},
    }
    if args.baseline_src:
        path = os.pathsep.join([args.baseline_src, base.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        configs["old-tree"] = base | {"PYTHONPATH": path}
    configs = {name: env for name, env in configs.items() if name in args.configs.split(",")}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    for round_no in range(args.rounds):
        for name, env in configs.items():
            result = run_goal(env, args.ready_timeout, args.goal_timeout)
            print(json.dumps({"config": name, "round": round_no} | result), flush=True)
            results[name].append(result)
        if "new" in configs:
            new_s = results["new"][-1]["goal_s"]
            pairs = ", ".join(
                f"{n} / new {rs[-1]['goal_s'] / new_s:.2f}x" for n, rs in results.items() if n != "new"
            )
            print(f"round {round_no}: {pairs}", flush=True)
    best = {name: min(rs, key=lambda r: (not r["completed"], r["goal_s"])) for name, rs in results.items()}
    summary = ", ".join(
        f"{name} {r['goal_s']} s ({'completed' if r['completed'] else 'FAILED'})" for name, r in best.items()
    )
    new_best = best["new"]["goal_s"] if "new" in best else None
    ratios = [f"{n} / new {r['goal_s'] / new_best:.2f}x" for n, r in best.items() if new_best and n != "new"]
    print(f"sample goal: {summary}" + (f"; {', '.join(ratios)}" if ratios else ""))


if __name__ == "__main__":
    main()
