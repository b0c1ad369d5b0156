"""NATS over mutual TLS, and with a credentials file: the bus and the ``loom worker`` CLI.

The CA, the server certificate (for 127.0.0.1) and a client certificate are made fresh per
test with ``cryptography`` (the control-plane harness's ``Pki``). The credentials file is a
user JWT plus its nkey seed, issued by hand (``nkeys``, the package nats-py signs with) under
an operator and account that a nats-server in operator mode trusts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.k8s.envtest import Pki
from tests.support.nats_server import NatsServer
from tests.support.processes import LoomProcess, collect, echo_worker, poll

from loom.bus import Bus, BusError, Delivery
from loom.messages import TaskMessage
from loom.settings import NatsSettings
from loom.subjects import STREAM_TASKS, task_subject

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture
def client_tls(tmp_path: Path) -> Iterator[tuple[TlsFiles, NatsServer]]:
    """A client certificate and a JetStream nats-server requiring TLS with verified client certificates."""
    pki = Pki(tmp_path / "pki")
    server = pki.issue("server", "nats", server_names=["127.0.0.1", "localhost"])
    client = pki.issue("client", "loom-client")
    config = "\n".join(
        [
            "tls {",
            f'  cert_file: "{server.cert}"',
            f'  key_file: "{server.key}"',
            f'  ca_file: "{pki.ca.cert}"',
            "  verify: true",
            "}",
            "",
        ]
    )
    nats = NatsServer(config_text=config).start()
    try:
        yield TlsFiles(pki.ca.cert, client.cert, client.key), nats
    finally:
        nats.cleanup()


def connections(nats: NatsServer) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{nats.monitor_url}/connz?auth=true", timeout=5) as r:
        conns: list[dict[str, Any]] = json.load(r)["connections"] or []
    return conns


def settings(nats: NatsServer, tls: TlsFiles, *, cert: bool = True, name: str = "tls-test") -> NatsSettings:
    return NatsSettings(
        url=nats.url,
        name=name,
        tls_ca=str(tls.ca),
        tls_cert=str(tls.cert) if cert else None,
        tls_key=str(tls.key) if cert else None,
    )


async def connect(s: NatsSettings) -> Bus:
    """Bus.connect retries forever; a TLS setup that is refused should fail the test, not hang it."""
    return await asyncio.wait_for(Bus.connect(s), 20)


def tls_flags(tls: TlsFiles) -> list[str]:
    return ["--nats-tls-ca", str(tls.ca), "--nats-tls-cert", str(tls.cert), "--nats-tls-key", str(tls.key)]


async def test_bus_with_client_certificate_round_trips_a_task(
    client_tls: tuple[TlsFiles, NatsServer],
) -> None:
    tls, nats = client_tls
    bus = await connect(settings(nats, tls))
    try:
        (conn,) = [c for c in connections(nats) if c.get("name") == "tls-test"]
        assert conn["tls_version"].startswith("1.")
        assert conn["tls_peer_certs"][0]["subject"] == "CN=loom-client"

        durable = await bus.ensure_worker_consumer(
            "echo", "local", ack_wait=10, max_deliver=3, max_ack_pending=10
        )
        sent = TaskMessage(worker_type="echo", payload={"text": "over TLS"})
        await bus.publish_task(sent, subject=task_subject("echo", "local"))
        received: list[TaskMessage] = []
        stop = asyncio.Event()

        async def handle(d: Delivery) -> None:
            received.append(TaskMessage.from_bytes(d.data))
            await d.ack()
            stop.set()

        await asyncio.wait_for(
            bus.consume(STREAM_TASKS, durable, handle, max_in_flight=1, batch=1, stop=stop), 30
        )
        assert [(t.task_id, t.payload) for t in received] == [(sent.task_id, {"text": "over TLS"})]
        # Acked over the same connection: the task leaves the work queue.
        await poll(lambda: _queue_empty(bus), timeout=10)
    finally:
        await bus.close()


async def _queue_empty(bus: Bus) -> bool:
    return await bus.stream_messages(STREAM_TASKS) == 0


@pytest.mark.parametrize(
    ("cert", "reason"),
    [(False, "certificate required"), (None, "certificate verify failed")],
    ids=["no-client-cert", "no-ca"],
)
async def test_connection_refused_by_tls_logs_the_reason(
    client_tls: tuple[TlsFiles, NatsServer],
    caplog: pytest.LogCaptureFixture,
    cert: bool | None,
    reason: str,
) -> None:
    """The bus keeps retrying (NATS may come up later) and logs why each attempt failed."""
    tls, nats = client_tls
    if cert is None:  # plain settings: the server's certificate is not trusted
        attempt = NatsSettings(url=nats.url, name="refused")
    else:
        attempt = settings(nats, tls, cert=False, name="refused")
    caplog.set_level(logging.WARNING, logger="loom.bus")
    connecting = asyncio.create_task(Bus.connect(attempt))
    try:
        await poll(lambda: any(reason in r.getMessage() for r in caplog.records), timeout=20)
        assert not connecting.done()
        assert not [c for c in connections(nats) if c.get("name") == "refused"]
    finally:
        connecting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await connecting


async def test_worker_cli_takes_the_tls_flags(
    client_tls: tuple[TlsFiles, NatsServer], tmp_path: Path
) -> None:
    tls, nats = client_tls
    cfg = echo_worker(tmp_path)
    worker = LoomProcess(["worker", "--config", str(cfg), *tls_flags(tls)], nats.url).start()
    refused = LoomProcess(["worker", "--config", str(cfg), "--nats-tls-ca", str(tls.ca)], nats.url).start()
    bus = await connect(settings(nats, tls))
    try:
        worker.wait_ready(30)
        sub = await bus.subscribe_results("tls-cli")
        task = TaskMessage(parent_task_id="tls-cli", worker_type="echo", payload={"n": 7})
        await bus.publish_task(task, subject=task_subject("echo", "local"))
        (result,) = await collect(sub, 1, timeout=30)
        assert result["task_id"] == task.task_id and result["status"] == "completed"
        assert result["output"]["pid"] == worker.pid

        # The same worker without a client certificate: refused by the server, says why, never ready.
        await poll(lambda: "certificate required" in refused.log(), timeout=30)
        assert refused.proc is not None and refused.proc.poll() is None
        with pytest.raises(OSError):
            await asyncio.to_thread(urllib.request.urlopen, f"{refused.url}/readyz", timeout=2)
    finally:
        await bus.close()
        worker.cleanup()
        refused.cleanup()


# --------------------------------------------------------------------------- credentials file


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _nkey(prefix: int) -> tuple[Any, str]:
    import nkeys

    seed = nkeys.encode_seed(os.urandom(32), prefix)
    return nkeys.from_seed(bytearray(seed)), seed.decode()


def _jwt(signer: Any, subject: str, name: str, claims: dict[str, Any]) -> str:
    """A NATS JWT (v2) signed by ``signer``'s nkey."""
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = {
        "jti": uuid.uuid4().hex,
        "iat": int(time.time()),
        "iss": signer.public_key.decode(),
        "name": name,
        "sub": subject,
        "nats": {**claims, "version": 2},
    }
    signed = f"{header}.{_b64(json.dumps(body).encode())}"
    return f"{signed}.{_b64(signer.sign(signed.encode()))}"


@pytest.fixture
def creds_server(tmp_path: Path) -> Iterator[tuple[Path, NatsServer]]:
    """A user credentials file and a nats-server (operator mode, JetStream) that trusts its issuer."""
    import nkeys

    operator, _ = _nkey(nkeys.PREFIX_BYTE_OPERATOR)
    account, _ = _nkey(nkeys.PREFIX_BYTE_ACCOUNT)
    system, _ = _nkey(nkeys.PREFIX_BYTE_ACCOUNT)
    user, user_seed = _nkey(nkeys.PREFIX_BYTE_USER)
    unlimited = dict.fromkeys(
        ("subs", "data", "payload", "imports", "exports", "conn", "leaf", "mem_storage", "disk_storage"), -1
    )
    account_jwt = _jwt(
        operator,
        account.public_key.decode(),
        "loom",
        {"type": "account", "limits": {**unlimited, "wildcards": True, "streams": -1, "consumer": -1}},
    )
    user_jwt = _jwt(
        account,
        user.public_key.decode(),
        "loom-user",
        {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1},
    )
    system_jwt = _jwt(operator, system.public_key.decode(), "SYS", {"type": "account"})
    creds = tmp_path / "loom.creds"
    creds.write_text(
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user_seed}\n"
        "------END USER NKEY SEED------\n"
    )
    creds.chmod(0o600)
    config = "\n".join(
        [
            f'operator: "{_jwt(operator, operator.public_key.decode(), "test", {"type": "operator"})}"',
            f"system_account: {system.public_key.decode()}",
            "resolver: MEMORY",
            "resolver_preload: {",
            f'  {account.public_key.decode()}: "{account_jwt}"',
            f'  {system.public_key.decode()}: "{system_jwt}"',
            "}",
            "",
        ]
    )
    nats = NatsServer(config_text=config).start()
    try:
        yield creds, nats
    finally:
        nats.cleanup()


async def test_credentials_file_for_the_bus_and_the_worker_cli(
    creds_server: tuple[Path, NatsServer], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    creds, nats = creds_server
    worker = LoomProcess(
        ["worker", "--config", str(echo_worker(tmp_path)), "--nats-creds", str(creds)], nats.url
    )
    worker.start()
    bus = await connect(NatsSettings(url=nats.url, name="creds-test", creds_file=str(creds)))
    try:
        worker.wait_ready(30)
        sub = await bus.subscribe_results("creds")
        task = TaskMessage(parent_task_id="creds", worker_type="echo", payload={"n": 1})
        await bus.publish_task(task, subject=task_subject("echo", "local"))
        (result,) = await collect(sub, 1, timeout=30)
        assert result["task_id"] == task.task_id and result["status"] == "completed"

        # Without the credentials the server refuses the connection, and the log says so.
        caplog.set_level(logging.WARNING, logger="loom.bus")
        anonymous = asyncio.create_task(Bus.connect(NatsSettings(url=nats.url, name="anonymous")))
        try:
            await poll(lambda: any("Authorization Violation" in r.getMessage() for r in caplog.records), 20)
            assert not anonymous.done()
        finally:
            anonymous.cancel()
            with pytest.raises(asyncio.CancelledError):
                await anonymous
    finally:
        await bus.close()
        worker.cleanup()


async def test_one_shot_commands_give_up_on_a_refused_connection(
    client_tls: tuple[TlsFiles, NatsServer],
) -> None:
    """`loom submit` without a client certificate ends with the reason instead of waiting forever."""
    tls, nats = client_tls
    with pytest.raises(BusError, match="could not connect to NATS"):
        await Bus.connect(settings(nats, tls, cert=False, name="one-shot"), connect_timeout=2)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "loom.cli.main", "submit", "--worker-type", "echo", "--payload", "{}",
         "--nats-url", nats.url, "--nats-tls-ca", str(tls.ca), "--connect-timeout", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "could not connect to NATS" in done.stderr
