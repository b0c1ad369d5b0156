"""A real `loom up` for end-to-end tests: its own run dir, NATS and local model on free ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from loom.local.credentials import client_settings
from loom.settings import NatsSettings

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "config" / "samples"
LOOM = [sys.executable, "-m", "loom.cli.main"]


@dataclass
class LocalUp:
    """``loom up --no-view`` as a child process, driven the way the README drives it."""

    paths: list[Path]
    run_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.run_dir / "up.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> LocalUp:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            *LOOM,
            "up",
            *map(str, self.paths),
            "--no-view",
            "--run-dir",
            str(self.run_dir),
            "--nats-port",
            "0",
            "--nats-monitor-port",
            "0",
            *self.args,
        ]
        log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        return self

    def state(self) -> dict[str, Any]:
        return dict(json.loads((self.run_dir / "state.json").read_text()))

    def wait_ready(self, timeout: float = 420.0) -> dict[str, Any]:
        """Block until ``loom status --wait-ready`` says so (the Makefile's readiness check)."""
        done = subprocess.run(
            [*LOOM, "status", "--run-dir", str(self.run_dir), "--wait-ready", str(timeout)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=timeout + 30,
        )
        if done.returncode != 0:
            raise AssertionError(f"loom up not ready: {done.stderr}\n--- up.log ---\n{self.log()[-6000:]}")
        return self.state()

    def process(self, name: str) -> dict[str, Any]:
        return next(p for p in self.state()["processes"] if p["name"] == name)

    def jsz_consumer(self, name: str) -> dict[str, Any] | None:
        url = f"{self.state()['nats_monitor_url']}/jsz?streams=true&consumers=true"
        with urllib.request.urlopen(url, timeout=5) as resp:
            data = json.load(resp)
        for account in data.get("account_details") or []:
            for stream in account.get("stream_detail") or []:
                for consumer in stream.get("consumer_detail") or []:
                    if consumer["name"] == name:
                        return dict(consumer)
        return None

    def submit_cmd(self, text: str, timeout: float) -> list[str]:
        return [
            *LOOM,
            "submit",
            "Analyse this document",
            "--pipeline",
            "doc-analysis",
            "--context",
            f"text={text}",
            "--wait",
            "--timeout",
            str(timeout),
            "--nats-url",
            self.state()["nats_url"],
            "--run-dir",  # where the bus credentials of this loom up are
            str(self.run_dir),
        ]

    def nats_settings(self, name: str, tenant: str | None = "default") -> NatsSettings:
        """How a client reaches this loom up's bus: as a tenant's submitter, or the admin (None)."""
        base = NatsSettings(url=self.state()["nats_url"], name=name)
        return client_settings(base, self.run_dir, tenant=tenant)

    def stop(self, timeout: float = 120.0) -> int:
        """Ctrl-C (SIGINT) and wait for the drain; returns loom up's exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
                raise AssertionError(
                    f"loom up did not stop within {timeout}s:\n{self.log()[-4000:]}"
                ) from None
        return int(self.proc.returncode)


def parse_submit_output(stdout: str) -> dict[str, Any]:
    """The JSON document `loom submit --wait` prints before its timeline table."""
    doc, _ = json.JSONDecoder().raw_decode(stdout.lstrip())
    return dict(doc)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until(cond, timeout: float, what: str, interval: float = 0.1) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def local_up_factory(tmp_path: Path) -> Iterator[Any]:
    """Start `loom up` instances; whatever is still running at the end is stopped."""
    started: list[LocalUp] = []

    def make(paths: list[Path], env: dict[str, str] | None = None, args: list[str] | None = None) -> LocalUp:
        run_dir = tmp_path / f"run{len(started)}"
        up = LocalUp(paths=paths, run_dir=run_dir, env=env or {}, args=args or []).start()
        started.append(up)
        return up

    yield make
    for up in started:
        if up.proc is not None and up.proc.poll() is None:
            up.stop()
