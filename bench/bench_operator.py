"""Operator benchmark: bring N Worker resources to Ready on the test control plane.

Baseline (same run, same control plane): create N plain Deployments (same replicas)
directly and wait until all are available — the controller-manager/scheduler/kwok work
every Worker also needs. Then the operator run: create N Workers (one tier, --replicas)
and wait until every one reports Ready for its current generation. Prints both times,
the ratio, the operator's reconcile throughput and its resident memory afterwards.

    .venv/bin/python bench/bench_operator.py [--count 500]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import yaml
from kubernetes import client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.k8s.envtest import ControlPlane  # noqa: E402
from tests.support.nats_server import free_port  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def apply_crds(api: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api)
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        ext.create_custom_resource_definition(yaml.safe_load(path.read_text()))
    time.sleep(2)


def wait(check: Any, timeout: float, what: str) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if check():
            return time.monotonic() - began
        time.sleep(0.5)
    raise TimeoutError(f"{what} not done after {timeout}s")


def baseline(api: client.ApiClient, ns: str, count: int, replicas: int) -> float:
    apps = client.AppsV1Api(api)
    began = time.monotonic()

    def make(i: int) -> None:
        labels = {"app": f"d{i}"}
        apps.create_namespaced_deployment(
            ns,
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": f"d{i}"},
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {"containers": [{"name": "c", "image": "example.org/loom:bench"}]},
                    },
                },
            },
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(make, range(count)))

    def available() -> bool:
        items = apps.list_namespaced_deployment(ns).items
        return (
            sum(
                1
                for d in items
                if (d.status.observed_generation or 0) >= d.metadata.generation
                and (d.status.available_replicas or 0) >= replicas
            )
            >= count
        )

    wait(available, 1800, "baseline Deployments available")
    return time.monotonic() - began


def operator_run(api: client.ApiClient, ns: str, count: int, replicas: int, timeout: float) -> float:
    co = client.CustomObjectsApi(api)
    began = time.monotonic()

    def make(i: int) -> None:
        co.create_namespaced_custom_object(
            "loom.dev",
            "v1alpha1",
            ns,
            "workers",
            {
                "apiVersion": "loom.dev/v1alpha1",
                "kind": "Worker",
                "metadata": {"name": f"w{i}"},
                "spec": {
                    "systemPrompt": "Summarize.",
                    "tiers": ["local"],
                    "defaultModelTier": "local",
                    "autoscaling": {"enabled": False},
                    "replicas": replicas,
                },
            },
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(make, range(count)))

    def ready() -> bool:
        items = co.list_namespaced_custom_object("loom.dev", "v1alpha1", ns, "workers")["items"]
        done = 0
        for w in items:
            st = w.get("status") or {}
            conds = {c["type"]: c["status"] for c in st.get("conditions") or []}
            if conds.get("Ready") == "True" and st.get("observedGeneration") == w["metadata"]["generation"]:
                done += 1
        return done >= count

    try:
        wait(ready, timeout, "Workers Ready")
    except TimeoutError:
        items = co.list_namespaced_custom_object("loom.dev", "v1alpha1", ns, "workers")["items"]
        waiting = [
            w
            for w in items
            if not any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in (w.get("status") or {}).get("conditions") or []
            )
        ]
        print(
            f"{len(waiting)} not Ready, e.g. {waiting[0]['metadata']['name']}:",
            json.dumps({k: v for k, v in (waiting[0].get("status") or {}).items() if k != "kopf"})[:2000],
            file=sys.stderr,
        )
        raise
    return time.monotonic() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument(
        "--replicas",
        type=int,
        default=0,
        help="replicas per Worker; the harness's one fake node takes 110 pods, so 0 (the default) for 500",
    )
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    with ControlPlane(controllers=True) as plane, plane.api_client() as api:
        core = client.CoreV1Api(api)
        for ns in ("bench-baseline", "bench-operator"):
            core.create_namespace({"metadata": {"name": ns}})
        apply_crds(api)
        base = baseline(api, "bench-baseline", args.count, args.replicas)
        print(f"baseline: {args.count} Deployments available in {base:.1f}s")

        port = free_port()
        log = open(Path(tempfile.mkdtemp(prefix="loom-bench-")) / "operator.log", "wb")  # noqa: SIM115
        env = {
            **os.environ,
            "LOOM_KEDA": "off",
            "LOOM_METRICS_PORT": str(port),
            "LOOM_RESYNC_SECONDS": "600",
            "LOOM_NATS_MONITOR_URL": "http://127.0.0.1:1",
            "LOOM_WATCH_NAMESPACES": "bench-operator",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "loom.cli.main", "operator", "--kubeconfig", str(plane.admin_kubeconfig)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait(lambda: _healthy(port), 60, "operator healthy")
            rss_before = rss_mib(proc.pid)
            took = operator_run(api, "bench-operator", args.count, args.replicas, args.timeout)
            rss_after = rss_mib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
        print(
            f"operator: {args.count} Workers Ready in {took:.1f}s "
            f"({args.count / took:.1f} Workers/s; ratio to baseline {took / base:.2f}x)"
        )
        print(
            f"operator RSS: {rss_before:.0f} MiB idle, {rss_after:.0f} MiB with {args.count} Workers "
            f"({(rss_after - rss_before) * 1024 / args.count:.1f} KiB per Worker); log {log.name}"
        )
    return 0


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    sys.exit(main())
