"""Clients on a bus that needs credentials: a refusal is reported at once with its reason, and the
CLI finds a `loom up` run dir's credentials for that bus (a real nats-server with the rendered users)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.nats_server import NatsServer

from loom.bus import Bus, BusAuthError
from loom.bus_auth import Identity, Role, server_authorization
from loom.local.credentials import LocalCredentials, write_credentials
from loom.settings import NatsSettings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LOOM = [sys.executable, "-m", "loom.cli.main"]


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[NatsServer, LocalCredentials]]:
    server = NatsServer()
    local = LocalCredentials.generate(
        server.url, [Identity("admin", Role.ADMIN), Identity("tenant-default", Role.TENANT)]
    )
    server.config_text = server_authorization(list(local.credentials))
    server.start()
    try:
        yield server, local
    finally:
        server.cleanup()


async def test_a_refused_client_gets_the_reason_not_a_timeout(
    secured: tuple[NatsServer, LocalCredentials],
) -> None:
    server, local = secured
    # Without the refusal check this waits out the minute and raises a plain BusError (timeout).
    with pytest.raises(BusAuthError, match=r"Authorization Violation \(no credentials given\)"):
        await Bus.connect(NatsSettings(url=server.url), connect_timeout=60)
    with pytest.raises(BusAuthError, match=r"user 'admin'"):
        await Bus.connect(NatsSettings(url=server.url, user="admin", password="wrong"), connect_timeout=60)
    bus = await Bus.connect(
        NatsSettings(url=server.url, user="admin", password=local.admin().password), connect_timeout=60
    )
    await bus.close()


def loom(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LOOM, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_the_cli_uses_the_run_dirs_credentials_for_that_bus_and_says_where_they_are_missing(
    secured: tuple[NatsServer, LocalCredentials], tmp_path: Path
) -> None:
    server, local = secured
    run_dir = tmp_path / "run"
    write_credentials(run_dir, local)
    ok = loom("dead-letter", "list", "--nats-url", server.url, "--run-dir", str(run_dir))
    assert ok.returncode == 0, ok.stderr
    assert "0 dead letters" in ok.stderr
    assert local.admin().password not in ok.stdout + ok.stderr

    missing = loom("dead-letter", "list", "--nats-url", server.url, "--run-dir", str(tmp_path / "none"))
    assert missing.returncode == 1
    assert "Authorization Violation (no credentials given)" in missing.stderr
    assert f"{tmp_path / 'none' / 'nats-credentials.json'}" in missing.stderr
    assert "--run-dir" in missing.stderr

    ghost = loom(
        "submit", "--worker-type", "x", "--tenant", "ghost",
        "--nats-url", server.url, "--run-dir", str(run_dir),
    )
    assert ghost.returncode == 2
    assert "not 'ghost'" in ghost.stderr


async def test_a_job_retrying_refused_credentials_connects_once_the_server_knows_its_user(
    secured: tuple[NatsServer, LocalCredentials],
) -> None:
    """An EvalSuite's Job (``loom eval --retry-refused``): its identity is added to the server's user
    list when the Job is made, and the server loads it moments later; the Job must not fail on the
    first refusal. Without the flag the same refusal ends the connect at once."""
    import asyncio
    import signal

    server, local = secured
    late = LocalCredentials.generate(server.url, [Identity("eval_team_gate", Role.ADMIN)])
    (user,) = late.credentials
    settings = NatsSettings(url=server.url, user=user.identity.user, password=user.password)
    with pytest.raises(BusAuthError, match=r"user 'eval_team_gate'"):
        await Bus.connect(settings, connect_timeout=60)
    connecting = asyncio.ensure_future(Bus.connect(settings, connect_timeout=60, retry_refused=True))
    await asyncio.sleep(2.5)  # refused at least twice (the client retries every second)
    assert not connecting.done()
    config = Path(server.store_dir) / "nats.conf"
    config.write_text(server_authorization([*local.credentials, user]), encoding="utf-8")
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)  # nats-server reloads its configuration
    bus = await asyncio.wait_for(connecting, 30)
    assert bus.is_connected
    await bus.close()
    # Still refused at the timeout: the error says so, not a plain timeout.
    ghost = NatsSettings(url=server.url, user="ghost", password="x" * 20)
    with pytest.raises(BusAuthError, match=r"user 'ghost'"):
        await Bus.connect(ghost, connect_timeout=8, retry_refused=True)
