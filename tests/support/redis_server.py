"""A real redis-server for tests, on a random loopback port, no persistence."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.nats_server import free_port, start_server, stop_server


def redis_server_binary() -> str | None:
    """redis-server (or valkey-server) on PATH, if installed (Debian: apt-get install redis-server)."""
    return shutil.which("redis-server") or shutil.which("valkey-server")


@dataclass
class RedisServer:
    """One redis-server process bound to 127.0.0.1."""

    port: int = field(default_factory=free_port)
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="loom-redis-"))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("redis-server not installed")
        self.proc = start_server(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.workdir,
            ],
            Path(self.workdir) / "redis.log",
            self._pong,
            timeout,
        )
        return self

    def _pong(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    def stop(self) -> None:
        stop_server(self.proc)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server for one test; a missing binary fails the test and names the setup step."""
    if redis_server_binary() is None:
        pytest.fail("redis-server is not installed: run `bash hack/test-setup.sh system` (in `make test`)")
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.cleanup()
