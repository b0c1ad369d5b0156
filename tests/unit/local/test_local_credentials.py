"""Bus credentials of local mode: who `loom up` makes, where they are kept, who a client becomes."""

from __future__ import annotations

import itertools
import os
import stat
from pathlib import Path

import pytest

from loom.api import load_paths, load_text
from loom.bus_auth import Role
from loom.cli.commands.up import process_specs, setup_bus_auth
from loom.local.credentials import (
    LocalCredentials,
    LocalCredentialsError,
    client_settings,
    credentials_path,
    named_tenants,
    plan_identities,
    read_credentials,
    remove_credentials,
    same_server,
    write_credentials,
    write_private,
)
from loom.local.manifests import build_plan
from loom.settings import LOCAL_MODE_ENV, NatsSettings, bind_host, local_mode

ROOT = Path(__file__).resolve().parents[3]
SAMPLES = ROOT / "config" / "samples"
URL = "nats://127.0.0.1:4333"

EXTRA = """
apiVersion: loom.dev/v1alpha1
kind: Worker
metadata: {name: two-tiers}
spec:
  workerKind: processor
  processingBackend: loom.contrib.docs.DocumentFacts
  defaultModelTier: local
  tiers: [local, standard]
---
apiVersion: loom.dev/v1alpha1
kind: Schedule
metadata: {name: nightly}
spec:
  intervalSeconds: 60
  tenant: team-b
  dispatchType: task
  task: {workerType: two-tiers}
"""


def samples_plan(tmp_path: Path, extra: str | None = None):  # type: ignore[no-untyped-def]
    resources = list(load_paths([SAMPLES]))
    if extra is not None:
        resources += load_text(extra, source=str(tmp_path / "extra.yaml"))
    plan = build_plan(
        resources, run_dir=tmp_path, ports=itertools.count(21000), local_llm_url="http://127.0.0.1:1/v1"
    )
    return resources, plan


def test_every_process_gets_its_role_and_the_clients_get_admin_and_tenants(tmp_path: Path) -> None:
    resources, plan = samples_plan(tmp_path, EXTRA)
    tenants = named_tenants(resources)
    assert tenants == ["default", "team-b"]  # the Schedule names team-b
    by_process, everyone = plan_identities(plan, tenants)
    assert set(by_process) == {p.name for p in plan.processes}
    assert by_process["router"].role is Role.ROUTER
    two = [i for n, i in by_process.items() if n.startswith("worker-two-tiers-")]
    assert len(two) == 2 and two[0] == two[1]  # one identity per worker type, serving both tiers
    assert two[0].worker_type == "two-tiers" and set(two[0].tiers) == {"local", "standard"}
    assert by_process["pipeline-doc-analysis"].pipeline == "doc-analysis"
    assert by_process["scheduler-nightly"] == by_process["scheduler-hourly-status"]
    assert by_process["scheduler-nightly"].role is Role.SCHEDULER
    users = {i.user: i for i in everyone}
    assert len(users) == len(everyone)
    assert users["admin"].role is Role.ADMIN
    assert {u.tenant for u in users.values() if u.role is Role.TENANT} == {"default", "team-b"}


def test_tenants_named_in_tenant_limits_get_an_identity(tmp_path: Path) -> None:
    policy = """
apiVersion: loom.dev/v1alpha1
kind: RouterPolicy
metadata: {name: p}
spec:
  tenantLimits:
    overrides:
      acme: {requestsPerMinute: 10}
"""
    assert named_tenants(load_text(policy, source="p.yaml")) == ["acme", "default"]


def test_a_tenant_that_cannot_be_a_nats_user_is_a_clear_error(tmp_path: Path) -> None:
    _, plan = samples_plan(tmp_path)
    with pytest.raises(LocalCredentialsError, match=r"tenant 'a\.b'"):
        plan_identities(plan, ["default", "a.b"])


def test_credentials_and_server_config_are_owner_only_even_with_an_open_umask(tmp_path: Path) -> None:
    _, plan = samples_plan(tmp_path)
    (tmp_path / "nats.conf").write_text("old")
    os.chmod(tmp_path / "nats.conf", 0o644)
    old = os.umask(0)
    try:
        by_process = setup_bus_auth(plan, ["default"], tmp_path, URL)
    finally:
        os.umask(old)
    for path in (credentials_path(tmp_path), tmp_path / "nats.conf"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    local = read_credentials(tmp_path)
    assert local is not None and local.nats_url == URL
    assert by_process["router"] == local.user("router")
    conf = (tmp_path / "nats.conf").read_text()
    assert all(c.password in conf for c in local.credentials)  # the server knows every password
    assert len({c.password for c in local.credentials}) == len(local.credentials)
    remove_credentials(tmp_path)
    assert read_credentials(tmp_path) is None and not (tmp_path / "nats.conf").exists()


def test_write_private_never_follows_a_planted_temp_link(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("untouched")
    path = tmp_path / "secret.json"
    (tmp_path / f".secret.json.{os.getpid()}.tmp").symlink_to(target)
    write_private(path, "s3cret")
    assert target.read_text() == "untouched"
    assert path.read_text() == "s3cret" and not path.is_symlink()


def test_each_process_connects_as_its_identity_in_local_mode(tmp_path: Path) -> None:
    _, plan = samples_plan(tmp_path)
    by_process = setup_bus_auth(plan, ["default"], tmp_path, URL)
    made = process_specs(plan, nats_url=URL, log_level="INFO", cwd=".", credentials=by_process)
    specs = {s.name: s for s in made}
    env = specs["worker-doc-extractor-local"].env
    assert env["LOOM_NATS_USER"] == "worker-doc-extractor"
    assert env["LOOM_NATS_PASSWORD"] == by_process["worker-doc-extractor-local"].password
    assert env["LOOM_NATS_INBOX_PREFIX"] == "_INBOX_worker-doc-extractor"
    assert env["LOOM_NATS_CREDS"] == "" and env["LOOM_NATS_TOKEN"] == ""  # nothing from the user's shell
    assert all(s.env[LOCAL_MODE_ENV] == "1" for s in specs.values())  # router and pipeline too
    no_auth = process_specs(plan, nats_url=URL, log_level="INFO", cwd=".")
    assert all("LOOM_NATS_USER" not in s.env and s.env[LOCAL_MODE_ENV] == "1" for s in no_auth)


def _stored(tmp_path: Path) -> LocalCredentials:
    _, plan = samples_plan(tmp_path)
    _, everyone = plan_identities(plan, ["default", "team-b"])
    local = LocalCredentials.generate(URL, everyone)
    write_credentials(tmp_path, local)
    return local


def test_a_client_becomes_the_tenant_or_the_admin_of_that_bus_only(tmp_path: Path) -> None:
    local = _stored(tmp_path)
    sub = client_settings(NatsSettings(url="nats://localhost:4333"), tmp_path, tenant="team-b")
    assert (sub.user, sub.password) == ("tenant_team-b", local.tenant("team-b").password)
    assert sub.inbox_prefix == "_INBOX_tenant_team-b"
    admin = client_settings(NatsSettings(url=URL), tmp_path, tenant=None)
    assert (admin.user, admin.password) == ("admin", local.admin().password)
    # Another server never receives loom up's passwords.
    other = client_settings(NatsSettings(url="nats://127.0.0.1:4222"), tmp_path, tenant=None)
    assert other.user is None and other.password is None
    # Credentials the user gave win.
    given = client_settings(NatsSettings(url=URL, user="me", password="pw"), tmp_path, tenant=None)
    assert (given.user, given.password) == ("me", "pw")
    # No run dir credentials: unchanged.
    assert client_settings(NatsSettings(url=URL), tmp_path / "none", tenant=None).user is None


def test_a_tenant_loom_up_made_no_identity_for_is_named_with_the_fix(tmp_path: Path) -> None:
    _stored(tmp_path)
    with pytest.raises(LocalCredentialsError, match=r"tenants default, team-b, not 'ghost'.*tenantLimits"):
        client_settings(NatsSettings(url=URL), tmp_path, tenant="ghost")


def test_same_server() -> None:
    assert same_server("nats://127.0.0.1:4222", "nats://localhost")
    assert same_server("127.0.0.1:4333", "nats://[::1]:4333")
    assert not same_server("nats://127.0.0.1:4222", "nats://127.0.0.1:4223")
    assert not same_server("nats://10.0.0.1:4222", "nats://127.0.0.1:4222")
    assert not same_server("nats://127.0.0.1:4222,nats://127.0.0.1:4223", "nats://127.0.0.1:4222")


def test_runtime_ports_bind_loopback_only_in_local_mode() -> None:
    assert local_mode({LOCAL_MODE_ENV: "1"}) and local_mode({LOCAL_MODE_ENV: "true"})
    assert not local_mode({}) and not local_mode({LOCAL_MODE_ENV: "0"})
    assert bind_host({LOCAL_MODE_ENV: "1"}) == "127.0.0.1"
    assert bind_host({}) == "0.0.0.0"


@pytest.mark.parametrize(("local", "host"), [("1", "127.0.0.1"), ("", "0.0.0.0")])
async def test_the_health_server_listens_where_the_mode_says(
    local: str, host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loom.health import HealthServer

    monkeypatch.setenv(LOCAL_MODE_ENV, local)  # how loom up tells its processes
    server = HealthServer(0, lambda: True)
    await server.start()
    try:
        assert server._runner is not None
        assert [a[0] for a in server._runner.addresses] == [host]
    finally:
        await server.stop()
