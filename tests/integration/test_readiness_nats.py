"""Every long-running role's /readyz follows its NATS connection: not ready while the server is
gone, ready again once it is back (the kubelet then stops and resumes sending it traffic).

Found on the real node: the pipeline (and the orchestrator and scheduler, built the same way)
stayed ready once started, with NATS scaled to zero.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.support.endpoints import loopback_allowed
from tests.support.nats_server import NatsServer
from tests.support.orchestrators import write_config
from tests.support.processes import LoomProcess, echo_worker

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parents[2] / "config" / "samples"

ROLES: dict[str, Callable[[Path], list[str]]] = {
    "worker": lambda tmp: ["worker", "--config", str(echo_worker(tmp))],
    "router": lambda tmp: ["router"],
    "pipeline": lambda tmp: ["pipeline", "--config", str(SAMPLES / "pipeline-doc-analysis.yaml")],
    "scheduler": lambda tmp: ["scheduler", "--config", str(SAMPLES / "schedule-hourly-status.yaml")],
    # The model is never called: no goal is submitted.
    "orchestrator": lambda tmp: ["orchestrator", "--config", str(write_config(tmp, MODEL_URL))],
}
MODEL_URL = "http://127.0.0.1:9/v1"


def _readyz(proc: LoomProcess) -> int:
    try:
        with urllib.request.urlopen(f"{proc.url}/readyz", timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _until(proc: LoomProcess, status: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _readyz(proc) != status:
        assert proc.proc is not None and proc.proc.poll() is None, proc.log()
        if time.monotonic() > deadline:
            pytest.fail(f"/readyz not {status} after {timeout}s:\n{proc.log()[-3000:]}")
        time.sleep(0.1)


@pytest.mark.parametrize("role", sorted(ROLES))
def test_readyz_follows_the_nats_connection(role: str, nats_server: NatsServer, tmp_path: Path) -> None:
    # A lost connection must not end the process within the test (it would exit, not un-ready).
    env = loopback_allowed(MODEL_URL) if role == "orchestrator" else {}
    proc = LoomProcess([*ROLES[role](tmp_path), "--nats-lost-grace", "120"], nats_server.url, env).start()
    try:
        proc.wait_ready(30)
        nats_server.stop()
        _until(proc, 503, 20)
        nats_server.start()
        _until(proc, 200, 30)
    finally:
        proc.cleanup()
