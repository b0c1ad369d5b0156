"""`loom up` secures its bus by default: each process connects as its own identity, clients without
credentials are refused, a tenant reads only its own subjects, and every port listens on loopback.

Real `loom up` processes (embedded nats-server, router, a processor worker, a pipeline), driven
with the `loom` CLI as a user would; no model is needed.
"""

from __future__ import annotations

import ipaddress
import json
import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from loom.bus import Bus, BusAuthError
from loom.local.credentials import credentials_path, read_credentials
from loom.settings import NatsSettings
from tests.e2e_local.conftest import LOOM, ROOT, LocalUp, parse_submit_output
from tests.support.processes import poll

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MANIFESTS = [
    {
        "apiVersion": "loom.dev/v1alpha1",
        "kind": "RouterPolicy",
        "metadata": {"name": "default"},
        "spec": {"tenantLimits": {"overrides": {"acme": {"requestsPerMinute": 600}}}},
    },
    {
        "apiVersion": "loom.dev/v1alpha1",
        "kind": "Worker",
        "metadata": {"name": "facts"},
        "spec": {
            "workerKind": "processor",
            "processingBackend": "loom.contrib.docs.DocumentFacts",
            "defaultModelTier": "local",
            "tiers": ["local"],
            "inputSchema": {
                "type": "object",
                "required": ["text"],
                "properties": {"text": {"type": "string"}},
            },
        },
    },
    {
        "apiVersion": "loom.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": "facts-only"},
        "spec": {
            "pipelineStages": [
                {"name": "extract", "workerType": "facts", "inputMapping": {"text": "goal.context.text"}}
            ]
        },
    },
]
TEXT = "Status note\n\nThe ferry leaves at 09:00 on 2025-03-14. Ask ops@example.com."


def loom(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LOOM, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def listening(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for name, width in (("tcp", 8), ("tcp6", 32)):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            addr, hexport = fields[1].split(":")
            if fields[3] != "0A" or int(hexport, 16) != port:  # 0A: LISTEN
                continue
            assert len(addr) == width
            if width == 8:
                found.add(".".join(str(int(addr[i : i + 2], 16)) for i in (6, 4, 2, 0)))
            else:
                words = [addr[i : i + 8] for i in range(0, 32, 8)]
                raw = b"".join(bytes.fromhex(w)[::-1] for w in words)
                found.add(str(ipaddress.IPv6Address(raw)))
    return found


def start(local_up_factory: Any, tmp_path: Path, args: list[str] | None = None) -> LocalUp:
    folder = tmp_path / "manifests"
    folder.mkdir(exist_ok=True)
    for doc in MANIFESTS:
        (folder / f"{doc['kind'].lower()}-{doc['metadata']['name']}.yaml").write_text(yaml.safe_dump(doc))
    started: LocalUp = local_up_factory([folder], args=args)
    started.wait_ready(timeout=240)
    return started


@pytest.fixture
def up(local_up_factory: Any, tmp_path: Path) -> LocalUp:
    return start(local_up_factory, tmp_path)


def submit(up: LocalUp, *args: str) -> subprocess.CompletedProcess[str]:
    nats = ["--nats-url", up.state()["nats_url"], "--run-dir", str(up.run_dir)]
    return loom("submit", *args, *nats)


async def test_loom_up_bus_needs_credentials_and_keeps_tenants_in_their_lane(
    up: LocalUp, tmp_path: Path
) -> None:
    state = up.state()
    url = state["nats_url"]
    assert state["bus_auth"] is True
    assert sorted(p["role"] for p in state["processes"]) == ["nats", "pipeline", "router", "worker"]

    # Credentials: owner-only files in the run dir, never in the output.
    creds = credentials_path(up.run_dir)
    for path in (creds, up.run_dir / "nats.conf"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    local = read_credentials(up.run_dir)
    assert local is not None and local.nats_url == url
    users = {c.identity.user for c in local.credentials}
    assert users == {
        "admin", "router", "worker-facts", "pipeline-facts-only", "tenant_default", "tenant_acme"
    }
    logs = up.log() + "".join(p.read_text(errors="replace") for p in (up.run_dir / "logs").glob("*.log"))
    assert not any(c.password in logs for c in local.credentials)

    # Every port loom up opened listens on loopback only.
    ports = {"nats client": urlsplit(url).port, "nats monitoring": urlsplit(state["nats_monitor_url"]).port}
    for p in state["processes"]:
        if p.get("metrics_url"):
            ports[p["name"]] = urlsplit(p["metrics_url"]).port
    for what, port in ports.items():
        assert port is not None
        assert listening(port) == {"127.0.0.1"}, (what, port, listening(port))

    # No credentials: refused, with where to find them.
    with pytest.raises(BusAuthError, match="no credentials given"):
        await Bus.connect(NatsSettings(url=url), connect_timeout=30)
    refused = loom("submit", "--worker-type", "facts", "--payload", "{}", "--nats-url", url,
                   "--run-dir", str(tmp_path / "elsewhere"))
    assert refused.returncode == 2
    assert "Authorization Violation" in refused.stderr and "--run-dir" in refused.stderr

    # A tenant's identity may not read worker subjects (other tenants' tasks) nor skip the router.
    tenant = await Bus.connect(up.nats_settings("e2e-tenant", tenant="default"), connect_timeout=30)
    try:
        await tenant.nc.subscribe("loom.tasks.>")
        await tenant.nc.flush()
        await poll(lambda: "permissions violation for subscription to \"loom.tasks.>\""
                   in tenant.state.last_error.lower(), 10)
        await tenant.nc.publish("loom.tasks.facts.local", b"{}")
        await tenant.nc.flush()
        await poll(lambda: "permissions violation for publish to \"loom.tasks.facts.local\""
                   in tenant.state.last_error.lower(), 10)
    finally:
        await tenant.close()

    # The normal flows: a task, a goal, and a named tenant's task, each with --wait.
    task = submit(up, "--worker-type", "facts", "--payload", json.dumps({"text": TEXT}), "--wait")
    assert task.returncode == 0, task.stderr + up.log()[-3000:]
    result = parse_submit_output(task.stdout)
    assert result["status"] == "completed" and result["output"]["emails"] == ["ops@example.com"]
    goal = submit(up, "Facts", "--pipeline", "facts-only", "--context", f"text={TEXT}", "--wait")
    assert goal.returncode == 0, goal.stderr
    assert parse_submit_output(goal.stdout)["status"] == "completed"
    acme = submit(up, "--worker-type", "facts", "--tenant", "acme", "--payload", json.dumps({"text": TEXT}),
                  "--wait")
    assert acme.returncode == 0, acme.stderr
    assert parse_submit_output(acme.stdout)["tenant"] == "acme"
    ghost = submit(up, "--worker-type", "facts", "--tenant", "ghost", "--payload", "{}")
    assert ghost.returncode == 2 and "not 'ghost'" in ghost.stderr


def test_dead_letters_are_the_admins(up: LocalUp) -> None:
    nats = ["--nats-url", up.state()["nats_url"], "--run-dir", str(up.run_dir)]
    sent = submit(up, "--worker-type", "nobody", "--payload", "{}", "--id", "lost-1")
    assert sent.returncode == 0, sent.stderr

    def letters() -> list[dict[str, Any]]:
        done = loom("dead-letter", "list", "--json", *nats)  # the run's admin, found in the run dir
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]

    deadline = time.monotonic() + 60
    while not (first := [d for d in letters() if d["task_id"] == "lost-1"]):
        assert time.monotonic() < deadline, "no dead letter for lost-1"
        time.sleep(0.5)
    assert first[0]["reason"] == "unknown_worker_type"

    # A tenant's identity may not read them.
    local = read_credentials(up.run_dir)
    assert local is not None
    tenant = local.tenant("default").env
    as_tenant = loom("dead-letter", "list", "--nats-user", tenant["LOOM_NATS_USER"],
                     f"--nats-password={tenant['LOOM_NATS_PASSWORD']}",
                     "--nats-inbox-prefix", tenant["LOOM_NATS_INBOX_PREFIX"], *nats)
    assert as_tenant.returncode != 0
    assert "permissions violation" in as_tenant.stderr.lower(), as_tenant.stderr

    replay = loom("dead-letter", "replay", first[0]["dead_letter_id"], *nats)
    assert replay.returncode == 0, replay.stderr
    assert f"replayed {first[0]['dead_letter_id']} to loom.tasks.incoming" in replay.stdout
    # The replayed task reached the router again, which dead-lettered it anew.
    deadline = time.monotonic() + 60
    while True:
        again = [d for d in letters() if d["task_id"] == "lost-1"]
        if again and again[0]["dead_letter_id"] != first[0]["dead_letter_id"]:
            break
        assert time.monotonic() < deadline, f"the replay did not come back: {again}"
        time.sleep(0.5)
    assert len(again) == 1 and again[0]["reason"] == "unknown_worker_type"
    assert up.stop() == 0
    assert not credentials_path(up.run_dir).exists() and not (up.run_dir / "nats.conf").exists()


async def test_loom_mcp_calls_tools_as_its_configs_tenant(up: LocalUp, tmp_path: Path) -> None:
    import mcp_types as types
    from mcp import Client, StdioServerParameters

    folder = tmp_path / "manifests"
    gateway = tmp_path / "gateway.yaml"
    gateway.write_text(yaml.safe_dump({
        "name": "local_gateway",
        "tenant": "acme",
        "tools": {"workers": [{"config": str(folder / "worker-facts.yaml")}]},
    }))
    params = StdioServerParameters(
        command=LOOM[0],
        args=[*LOOM[1:], "mcp", "--config", str(gateway), "--run-dir", str(up.run_dir)],
        env={**os.environ, "LOOM_NATS_URL": up.state()["nats_url"]},
        cwd=str(ROOT),
    )
    async with Client(params) as client:
        done = await client.call_tool("facts", {"text": TEXT})
    assert not done.is_error, done
    assert len(done.content) == 1 and isinstance(done.content[0], types.TextContent)
    assert json.loads(done.content[0].text)["emails"] == ["ops@example.com"]


def test_no_auth_is_an_explicit_loud_opt_out(local_up_factory: Any, tmp_path: Path) -> None:
    up = start(local_up_factory, tmp_path, ["--no-auth"])
    assert up.state()["bus_auth"] is False
    assert "WARNING: --no-auth" in up.log() and "forge results" in up.log()
    assert not credentials_path(up.run_dir).exists()
    # Any client gets in: exactly what the warning says.
    sent = loom("submit", "--worker-type", "facts", "--payload", json.dumps({"text": TEXT}), "--wait",
                "--nats-url", up.state()["nats_url"], "--run-dir", str(tmp_path / "elsewhere"))
    assert sent.returncode == 0, sent.stderr
    assert up.stop() == 0
