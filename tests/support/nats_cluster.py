"""A real three-node JetStream cluster for tests: three nats-server processes with cluster routes on
loopback ports, each with its own store, so a node can be SIGKILLed and restarted with its data."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.nats_server import NatsServer, free_port

CLUSTER_NAME = "loom-test"


@dataclass
class NatsCluster:
    """Nodes ``n1``..``nN`` of one JetStream cluster; ``url`` lists every node (what clients get)."""

    size: int = 3
    root: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="loom-natscluster-"))
    nodes: list[NatsServer] = field(default_factory=list)
    cluster_ports: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cluster_ports = [free_port() for _ in range(self.size)]
        routes = [f"nats-route://127.0.0.1:{p}" for p in self.cluster_ports]
        for i in range(self.size):
            name = f"n{i + 1}"
            store = Path(self.root) / name
            store.mkdir(parents=True, exist_ok=True)
            config = {
                "server_name": name,
                "cluster": {
                    "name": CLUSTER_NAME,
                    "listen": f"127.0.0.1:{self.cluster_ports[i]}",
                    "routes": [r for j, r in enumerate(routes) if j != i],
                },
            }
            # nats-server configuration accepts JSON values.
            text = "\n".join(f"{k}: {json.dumps(v)}" for k, v in config.items()) + "\n"
            self.nodes.append(NatsServer(store_dir=str(store), config_text=text))

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def start(self, timeout: float = 60.0) -> NatsCluster:
        """Start every node, then wait until JetStream has a meta leader and every node sees its peers."""
        deadline = time.monotonic() + timeout
        for node in self.nodes:  # /healthz?js-enabled-only answers before the cluster forms
            node.start(max(1.0, deadline - time.monotonic()))
        self.wait_formed(max(1.0, deadline - time.monotonic()))
        return self

    def jsz(self, node: int, **params: str) -> dict[str, Any]:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        with urllib.request.urlopen(f"{self.nodes[node].monitor_url}/jsz?{query}", timeout=2) as r:
            return dict(json.loads(r.read()))

    def wait_formed(self, timeout: float = 30.0) -> None:
        """Until some running node reports a meta leader and as many meta peers as running nodes."""
        running = [i for i, n in enumerate(self.nodes) if n.proc is not None and n.proc.poll() is None]
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                leader = (self.jsz(running[0]).get("meta_cluster") or {}).get("leader")
                if leader:
                    # The leader knows whether each follower is current.
                    meta = self.jsz(int(str(leader).removeprefix("n")) - 1).get("meta_cluster") or {}
                    last = meta
                    peers = meta.get("replicas") or []
                    current = [r for r in peers if r.get("current") and not r.get("offline")]
                    if meta.get("leader") == leader and len(current) + 1 >= len(running):
                        return
            except OSError as exc:
                last = exc
            time.sleep(0.1)
        raise RuntimeError(f"JetStream cluster not formed within {timeout:g}s: {last}")

    def stream_leader(self, stream: str) -> int:
        """The index of the node leading ``stream`` (asks each running node's monitoring endpoint)."""
        for i, node in enumerate(self.nodes):
            if node.proc is None or node.proc.poll() is not None:
                continue
            try:
                info = self.jsz(i, streams="true")
            except OSError:
                continue
            for account in info.get("account_details") or []:
                for s in account.get("stream_detail") or []:
                    cluster = s.get("cluster") or {}
                    if s.get("name") == stream and cluster.get("leader"):
                        return int(str(cluster["leader"]).removeprefix("n")) - 1
        raise LookupError(f"no running node reports a leader for stream {stream!r}")

    def kill(self, node: int) -> None:
        """SIGKILL one node (its store stays, so :meth:`restart` brings it back with its data)."""
        proc = self.nodes[node].proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        self.nodes[node].proc = None

    def restart(self, node: int, timeout: float = 30.0) -> None:
        self.nodes[node].start(timeout)

    def cleanup(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)
