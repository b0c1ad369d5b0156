"""``loom mcp --transport streamable-http`` as a real process for tests, and the SDK client's transport."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2
from mcp.client.streamable_http import streamable_http_client

from tests.support.nats_server import free_port

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"},
    },
}
HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}



class Gateway:
    """The gateway process with the given listen address and options."""

    def __init__(
        self, config: Path, nats_url: str, host: str, *extra: str, env: dict[str, str] | None = None
    ):
        self.port = free_port()
        self.log_path = config.parent / f"mcp-{self.port}.log"
        cmd = [sys.executable, "-m", "loom.cli.main", "mcp", "--config", str(config), "--transport",
               "streamable-http", "--host", host, "--port", str(self.port), "--nats-url", nats_url, *extra]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> Gateway:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"loom mcp exited with {self.proc.returncode}:\n{self.log()}")
            if "serving http://" in self.log():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"loom mcp not serving after {timeout}s:\n{self.log()}")

    def wait_exit(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def with_headers(url: str, headers: dict[str, str]) -> Any:
    """The SDK's streamable HTTP transport with extra request headers."""
    return streamable_http_client(url, http_client=httpx2.AsyncClient(headers=headers, timeout=30))
