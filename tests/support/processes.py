"""Real ``loom`` role processes for tests: spawn, wait until ready, scrape metrics, stop, kill, restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.nats_server import free_port

if TYPE_CHECKING:
    from loom.bus import ResultSubscription, RoleBus


@dataclass
class LoomProcess:
    """One ``python -m loom.cli.main <role> ...`` process with its own metrics port and log file."""

    args: list[str]
    nats_url: str
    env: dict[str, str] = field(default_factory=dict)
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(
        default_factory=lambda: Path(tempfile.mkstemp(prefix="loom-proc-", suffix=".log")[1])
    )

    def start(self) -> LoomProcess:
        env = {**os.environ, "LOOM_NATS_URL": self.nats_url, "PYTHONUNBUFFERED": "1", **self.env}
        cmd = [sys.executable, "-m", "loom.cli.main", *self.args, "--metrics-port", str(self.metrics_port)]
        log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 20.0) -> LoomProcess:
        """Poll ``/readyz`` until 200; fail with the process log if it exits or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.args[0]} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.args[0]} not ready after {timeout}s:\n{self.log()}")

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels`` (0 when absent)."""
        total = 0.0
        for family in text_string_to_metric_families(self.metrics_text()):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code (SIGKILL's when it did not stop in ``timeout``)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def kill(self) -> None:
        """SIGKILL: the process dies at once, holding whatever it held."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def cleanup(self) -> None:
        self.kill()
        self.log_path.unlink(missing_ok=True)


class LoomProcesses:
    """Spawns role processes for one test and kills any still running at the end."""

    def __init__(self, nats_url: str):
        self.nats_url = nats_url
        self.procs: list[LoomProcess] = []

    def spawn(self, *args: str, env: dict[str, str] | None = None, ready: bool = True) -> LoomProcess:
        p = LoomProcess(list(args), self.nats_url, env or {}).start()
        self.procs.append(p)
        return p.wait_ready() if ready else p

    def router(self, *configs: str | Path, extra: tuple[str, ...] = (), ready: bool = True) -> LoomProcess:
        args = ["router"]
        if configs:
            args += ["--config", *map(str, configs)]
        return self.spawn(*args, *extra, ready=ready)

    def worker(
        self,
        config: str | Path,
        tier: str | None = None,
        *,
        extra: tuple[str, ...] = (),
        ready: bool = True,
        env: dict[str, str] | None = None,
    ) -> LoomProcess:
        args = ["worker", "--config", str(config)]
        if tier:
            args += ["--tier", tier]
        return self.spawn(*args, *extra, env=env, ready=ready)

    def cleanup(self) -> None:
        for p in self.procs:
            p.cleanup()


@pytest.fixture
def loom_procs(nats_url: str) -> Iterator[LoomProcesses]:
    """Role processes against the test's NATS server, killed after the test."""
    procs = LoomProcesses(nats_url)
    try:
        yield procs
    finally:
        procs.cleanup()


def run_cli(
    *args: str, nats_url: str | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run a one-shot ``loom`` command and capture its output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if nats_url:
        env["LOOM_NATS_URL"] = nats_url
    return subprocess.run(
        [sys.executable, "-m", "loom.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def write_yaml(directory: Path, name: str, doc: dict[str, object]) -> Path:
    """Write ``doc`` as ``<directory>/<name>.yaml``."""
    import yaml

    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def echo_worker(directory: Path, name: str = "echo", **fields: object) -> Path:
    """A processor Worker file using the echo backend (``fields`` in snake_case override defaults)."""
    doc: dict[str, object] = {
        "name": name,
        "worker_kind": "processor",
        "processing_backend": "loom.contrib.noop.EchoBackend",
        "default_model_tier": "local",
        **fields,
    }
    return write_yaml(directory, f"worker-{name}-{abs(hash(repr(sorted(fields.items())))) % 10_000}", doc)


async def poll(predicate: Callable[[], object], timeout: float = 20.0, interval: float = 0.05) -> None:  # noqa: ASYNC109
    """Await an (async or plain) predicate until true; AssertionError after ``timeout``."""
    import asyncio
    import inspect

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value {last!r})")


async def consumer_empty(b: RoleBus, stream: str, durable: str) -> bool:
    """Nothing waiting for ``durable`` and nothing it holds unsettled: a predicate for :func:`poll`."""
    return (await b.consumer_info(stream, durable)).total == 0


@pytest.fixture
async def bus(nats_url: str):  # type: ignore[no-untyped-def]
    """A connected Bus with the streams declared."""
    from loom.bus import Bus
    from loom.settings import NatsSettings

    b = await Bus.connect(NatsSettings(url=nats_url, name="test"))
    try:
        yield b
    finally:
        await b.close()


async def collect(sub: ResultSubscription, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:  # noqa: ASYNC109
    """``n`` results from a ResultSubscription, parsed (fails after ``timeout``)."""
    import json

    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"only {len(out)} of {n} results within {timeout}s")
        try:
            out.append(json.loads(await sub.get(timeout=remaining)))
        except TimeoutError:
            raise AssertionError(f"only {len(out)} of {n} results within {timeout}s") from None
    return out
