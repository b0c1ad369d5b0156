"""Your own NATS with JWT/nkeys accounts (``nats.auth.mode: creds``), on a real nats-server.

A nats-server in operator mode (memory resolver) with one account, ``LOOM``; every user is a
JWT made from what ``loom render --bus-users`` prints (its user name and permissions, the
same rule as every other deployment). Router and worker processes connect with ``.creds``
files and the environment the operator renders in ``creds`` mode; tenant a's task runs
through them, tenant b is refused, and the built-in scaler finds the worker's lag under the
account's public key (what ``nats.account`` must be set to with accounts).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import nkeys
import pytest
from tests.integration.test_bus_permissions import ROUTER_POLICY, denied, own_result
from tests.support.nats_server import NatsServer
from tests.support.processes import LoomProcesses, echo_worker, poll, write_yaml

from loom.api import load_paths
from loom.bus import Bus
from loom.messages import TaskMessage, TaskStatus
from loom.settings import NatsSettings
from loom.subjects import worker_consumer
from loom_operator.cli.render_cmd import bus_users, render_resources
from loom_operator.scaler_loop import fetch_lags
from loom_operator.settings import Settings

pytestmark = pytest.mark.integration

NAMESPACE = "team"


def _key(prefix: int) -> nkeys.KeyPair:
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(signer: nkeys.KeyPair, subject: str, name: str, nats_claims: dict[str, Any]) -> str:
    """A NATS JWT (v2): ed25519-nkey signed claims."""
    claims: dict[str, Any] = {
        "iat": int(time.time()),
        "iss": signer.public_key.decode(),
        "name": name,
        "sub": subject,
        "nats": {**nats_claims, "version": 2},
    }
    claims["jti"] = (
        base64.b32encode(hashlib.sha256(json.dumps(claims).encode()).digest()).decode().rstrip("=")
    )
    head = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = _b64(signer.sign(f"{head}.{body}".encode()))
    return f"{head}.{body}.{signature}"


class Accounts:
    """An operator, the LOOM account and a user JWT per record of ``loom render --bus-users``."""

    def __init__(self, directory: Path, records: list[dict[str, Any]]):
        self.operator = _key(nkeys.PREFIX_BYTE_OPERATOR)
        self.account = _key(nkeys.PREFIX_BYTE_ACCOUNT)
        op = self.operator.public_key.decode()
        self.account_id = self.account.public_key.decode()
        self.operator_jwt = _jwt(self.operator, op, "loom-test", {"type": "operator"})
        unlimited = {k: -1 for k in ("subs", "data", "payload", "imports", "exports", "conn", "leaf")}
        storage = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
        self.account_jwt = _jwt(
            self.operator,
            self.account_id,
            "LOOM",
            {"type": "account", "limits": {**unlimited, **storage, "wildcards": True}},
        )
        self.system = _key(nkeys.PREFIX_BYTE_ACCOUNT)  # the server's own (JetStream needs one)
        self.system_id = self.system.public_key.decode()
        self.system_jwt = _jwt(self.operator, self.system_id, "SYS", {"type": "account", "limits": unlimited})
        self.creds: dict[str, Path] = {}
        for record in records:
            self.creds[record["user"]] = self._user(directory, record)

    def _user(self, directory: Path, record: dict[str, Any]) -> Path:
        user = _key(nkeys.PREFIX_BYTE_USER)
        perms = record["permissions"]
        pub: dict[str, Any] = {"allow": perms["publish"]["allow"]}
        if perms["publish"].get("deny"):
            pub["deny"] = perms["publish"]["deny"]
        claims = {"type": "user", "pub": pub, "sub": {"allow": perms["subscribe"]["allow"]}}
        claims |= {"subs": -1, "data": -1, "payload": -1}
        token = _jwt(self.account, user.public_key.decode(), record["user"], claims)
        path = directory / f"{record['user']}.creds"
        path.write_text(
            "-----BEGIN NATS USER JWT-----\n"
            f"{token}\n"
            "------END NATS USER JWT------\n\n"
            "-----BEGIN USER NKEY SEED-----\n"
            f"{user.seed.decode()}\n"
            "------END USER NKEY SEED------\n"
        )
        path.chmod(0o600)
        return path

    def server_config(self) -> str:
        return (
            f"operator: {self.operator_jwt}\n"
            "resolver: MEMORY\n"
            f"system_account: {self.system_id}\n"
            f"resolver_preload: {{\n  {self.account_id}: {self.account_jwt}\n"
            f"  {self.system_id}: {self.system_jwt}\n}}\n"
        )


def _settings(url: str, creds: Path, user: str) -> NatsSettings:
    return NatsSettings(url=url, creds_file=str(creds), inbox_prefix=f"_INBOX_{user}", name=f"test-{user}")


async def test_creds_mode_on_nats_accounts(tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_yaml(manifests, "policy", ROUTER_POLICY)
    worker_file = echo_worker(manifests)
    resources = load_paths([manifests])
    settings = Settings(nats_auth="creds", nats_tenants=("a", "b"))
    records = bus_users(resources, settings, NAMESPACE)
    accounts = Accounts(tmp_path, records)
    by_resource = {r.get("resource"): r for r in records}
    router_user = by_resource["RouterPolicy/default"]["user"]
    worker_user = by_resource["Worker/echo"]["user"]

    # The environment the operator renders for each Deployment in creds mode, the creds at its path.
    rendered = render_resources(resources, settings, keda=False, namespace=NAMESPACE)

    def pod_env(key: str, user: str) -> dict[str, str]:
        (dep,) = [o for o in rendered[key] if o["kind"] == "Deployment"]
        env = {e["name"]: e.get("value", "") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["LOOM_NATS_CREDS"] == "/etc/loom/nats/identity/creds"
        return {
            "LOOM_NATS_CREDS": str(accounts.creds[user]),
            "LOOM_NATS_INBOX_PREFIX": env["LOOM_NATS_INBOX_PREFIX"],
        }

    server = NatsServer(config_text=accounts.server_config()).start()
    procs = LoomProcesses(server.url)
    admin = await Bus.connect(_settings(server.url, accounts.creds["admin"], "admin"), connect_timeout=10)
    alice = await Bus.connect(
        _settings(server.url, accounts.creds["tenant_a"], "tenant_a"), connect_timeout=10
    )
    bob = await Bus.connect(_settings(server.url, accounts.creds["tenant_b"], "tenant_b"), connect_timeout=10)
    try:
        procs.spawn("router", env=pod_env("routerpolicy-default", router_user))
        procs.worker(worker_file, env=pod_env("worker-echo", worker_user))

        task = TaskMessage(worker_type="echo", payload={"of": "a"}, tenant="a")
        sub = await alice.subscribe_results(task.task_id, "a")
        snoop = await bob.nc.subscribe("loom.results.tenant.a.>")
        await denied(bob, "loom.results.tenant.a.>")
        await alice.publish_task(task)
        result = await own_result(sub, task.task_id)
        assert result.status == TaskStatus.COMPLETED, result.error
        assert result.output is not None and result.output["echo"] == {"of": "a"}
        assert snoop.pending_msgs == 0

        # The scaler reads the worker's lag under the account's public key (nats.account).
        consumer = worker_consumer("echo", "local")
        await admin.js_publish(
            "loom.tasks.echo.local", TaskMessage(worker_type="echo", payload={}).to_bytes()
        )
        async with httpx.AsyncClient(timeout=5) as http:
            assert consumer not in await fetch_lags(http, server.monitor_url)  # not in $G

            async def seen() -> bool:
                return consumer in await fetch_lags(http, server.monitor_url, accounts.account_id)

            await poll(seen, 20)
    finally:
        for bus in (alice, bob, admin):
            await bus.close()
        procs.cleanup()
        log = (Path(server.store_dir) / "nats.log").read_text(errors="replace")
        server.cleanup()
    # Only bob was refused anything: the roles had what the normal flow needs.
    violations = [line for line in log.splitlines() if "Violation" in line]
    assert violations, "the server logs violations (else the next check is vacuous)"
    assert all("test-tenant_b" in line for line in violations), violations
