"""Bus identity in the chart: auth on by default, the bundled NATS includes and reloads the
operator's user list, and its reload script works against a real nats-server."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml
from nats.errors import NoServersError

from loom.local.nats import nats_server_binary
from loom_operator.k8s import POLICY_REFUSAL, KubeError, refused
from loom_operator.render.bus_auth import AUTH_KEY, password, server_secrets, tenant_identity
from loom_operator.settings import Settings
from tests.support import chart
from tests.support.chart import NAMESPACE, RELEASE, VALUE_SETS, by_kind, one
from tests.support.nats_server import free_port, start_server, stop_server

FULLNAME = f"{RELEASE}-loom" if "loom" not in RELEASE else RELEASE
AUTH_SECRET = f"{FULLNAME}-nats-auth"


def operator_env(objects: list[dict[str, Any]]) -> dict[str, Any]:
    dep = one(objects, "Deployment")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def test_defaults_turn_bus_auth_on(tmp_path: Path) -> None:
    objects = chart.render({}, tmp_path)
    key = one(objects, "Secret", f"{FULLNAME}-nats-auth-key")
    assert len(base64.b64decode(key["data"]["key"])) == 48
    env = operator_env(objects)
    assert env["LOOM_NATS_AUTH"] == "generated"
    assert env["LOOM_NATS_AUTH_KEY"] == {"secretKeyRef": {"name": f"{FULLNAME}-nats-auth-key", "key": "key"}}
    assert env["LOOM_NATS_AUTH_SECRET"] == f"{NAMESPACE}/{AUTH_SECRET}"
    assert env["LOOM_NATS_TENANTS"] == ""
    assert env["LOOM_NATS_ACCOUNT"] == "$G"
    # The operator writes Secrets but can never read one (API keys live in Secrets too).
    rules = [r for r in one(objects, "ClusterRole")["rules"] if "secrets" in r["resources"]]
    assert rules == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "patch"]}]
    # ... and only Secrets it manages (the admission policy).
    policy = one(objects, "ValidatingAdmissionPolicy")
    assert any("secrets" in r["resources"] for r in policy["spec"]["matchConstraints"]["resourceRules"])
    # Argo CD renders with `helm template` (no lookup): a fresh key every time, hence keySecret.
    again = one(chart.render({}, tmp_path), "Secret", f"{FULLNAME}-nats-auth-key")
    assert again["data"]["key"] != key["data"]["key"]
    own = chart.render({"nats": {"auth": {"keySecret": "my-key"}}}, tmp_path)
    assert not by_kind(own, "Secret")
    assert operator_env(own)["LOOM_NATS_AUTH_KEY"]["secretKeyRef"]["name"] == "my-key"


def test_bundled_nats_includes_and_reloads_the_operators_users(tmp_path: Path) -> None:
    objects = chart.render(VALUE_SETS["bundled-nats"], tmp_path)
    assert operator_env(objects)["LOOM_NATS_TENANTS"] == "a,b"
    cm = one(objects, "ConfigMap", f"{FULLNAME}-nats-config")
    assert 'include "auth.conf"' in cm["data"]["nats.conf"]
    sts = one(objects, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    assert pod["shareProcessNamespace"] is True  # the reloader signals nats-server
    (init,) = pod["initContainers"]
    nats_c, reloader = pod["containers"]
    assert init["command"] == ["sh", "/etc/nats-config/auth-reload.sh", "once"]
    assert reloader["command"] == ["sh", "/etc/nats-config/auth-reload.sh"]
    assert nats_c["args"] == ["--config", "/etc/nats/nats.conf"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["auth"]["secret"] == {
        "secretName": AUTH_SECRET,
        "optional": True,
        "items": [{"key": AUTH_KEY, "path": AUTH_KEY}],
    }
    mounts = {m["name"]: m["mountPath"] for m in nats_c["volumeMounts"]}
    assert mounts["conf"] == "/etc/nats" and "auth" not in mounts
    assert {m["name"] for m in reloader["volumeMounts"]} == {"config", "conf", "auth", "run"}
    for c in (init, reloader):
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["image"] == nats_c["image"]


def test_no_auth_keeps_the_plain_server(tmp_path: Path) -> None:
    objects = chart.render({"nats": {"bundled": {"enabled": True}, "auth": {"mode": "none"}}}, tmp_path)
    assert "include" not in one(objects, "ConfigMap", f"{FULLNAME}-nats-config")["data"]["nats.conf"]
    pod = one(objects, "StatefulSet")["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1 and "initContainers" not in pod
    assert not by_kind(objects, "Secret")
    env = operator_env(objects)
    assert env["LOOM_NATS_AUTH"] == "none" and "LOOM_NATS_AUTH_KEY" not in env
    assert not [r for r in one(objects, "ClusterRole")["rules"] if "secrets" in r["resources"]]


def test_creds_mode_and_account(tmp_path: Path) -> None:
    objects = chart.render({"nats": {"auth": {"mode": "creds"}, "account": "LOOM"}}, tmp_path)
    env = operator_env(objects)
    assert env["LOOM_NATS_AUTH"] == "creds" and env["LOOM_NATS_ACCOUNT"] == "LOOM"
    assert not by_kind(objects, "Secret")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"nats": {"credentialsSecret": "shared"}}, "set nats.auth.mode=none to share it"),
        ({"nats": {"auth": {"mode": "creds", "tenants": ["a"]}}}, "need nats.auth.mode=generated"),
        ({"nats": {"auth": {"tenants": ["Team_A"]}}}, "tenants"),
        ({"nats": {"auth": {"mode": "on"}}}, "mode"),
    ],
)
def test_bad_auth_values_are_refused(values: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(chart.HelmFailed, match=message):
        chart.render(values, tmp_path)


def test_a_write_the_admission_policy_refuses_is_final_not_an_rbac_retry(tmp_path: Path) -> None:
    """A foreign Secret where a resource's identity Secret goes: the resource stalls with the reason."""
    policy = chart.template_text({}, tmp_path, "--show-only", "templates/writepolicy.yaml")
    assert POLICY_REFUSAL in policy  # the operator recognises the chart's own wording
    denial = (
        'secrets "w-worker-nats" is forbidden: ValidatingAdmissionPolicy denied request: '
        f"the Loom operator {POLICY_REFUSAL}"
    )
    assert refused(KubeError(403, denial, "Forbidden"))
    assert not refused(
        KubeError(403, 'secrets is forbidden: User "x" cannot patch resource "secrets"', "Forbidden")
    )


# ---------------------------------------------------------------- the reload script, for real

KEY = "r" * 40


def _server_conf(chart_conf: str, tmp: Path, port: int, monitor: int) -> str:
    """The chart's nats.conf with this test's ports and paths."""
    out = chart_conf.replace("port: 4222", f"port: {port}").replace(
        "http_port: 8222", f"http_port: {monitor}"
    )
    out = out.replace("/var/run/nats/nats.pid", str(tmp / "run" / "nats.pid"))
    return out.replace("store_dir: /data", f"store_dir: {tmp / 'data'}")


def _auth_conf(tenants: tuple[str, ...]) -> bytes:
    settings = Settings(
        nats_auth="generated", nats_auth_key=KEY, nats_auth_secret="ns/auth", nats_tenants=tenants
    )
    secret = server_secrets([], settings)[0]
    return base64.b64decode(secret["data"][AUTH_KEY])


async def _connects(port: int, user: str) -> bool:
    try:
        nc = await nats.connect(
            f"nats://127.0.0.1:{port}",
            user=user,
            password=password(KEY, user),
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=2,
        )
    except (NoServersError, OSError, nats.errors.Error):
        return False
    await nc.close()
    return True


def _wait(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if asyncio.run(check()):
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_reload_script_installs_the_operators_users_into_a_running_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVER_NAME", "test")  # the pod's env, read by nats.conf
    objects = chart.render(VALUE_SETS["bundled-nats"], tmp_path)
    data = one(objects, "ConfigMap", f"{FULLNAME}-nats-config")["data"]
    for d in ("config", "conf", "auth", "run", "data"):
        (tmp_path / d).mkdir()
    port, monitor = free_port(), free_port()
    (tmp_path / "config" / "nats.conf").write_text(_server_conf(data["nats.conf"], tmp_path, port, monitor))
    script = tmp_path / "config" / "auth-reload.sh"
    script.write_text(data["auth-reload.sh"])
    env = {
        **os.environ,
        "PATH": f"{Path(nats_server_binary()).parent}:{os.environ['PATH']}",
        "AUTH_SRC": str(tmp_path / "auth" / "auth.conf"),
        "AUTH_DST": str(tmp_path / "conf" / "auth.conf"),
        "CONF_SRC": str(tmp_path / "config" / "nats.conf"),
        "PID_FILE": str(tmp_path / "run" / "nats.pid"),
        "RELOAD_SECONDS": "0.2",
        "SERVER_NAME": "test",
    }
    # Init: no user list yet, so a placeholder that admits nobody.
    init = subprocess.run(["sh", str(script), "once"], env=env, capture_output=True, text=True, timeout=30)
    assert init.returncode == 0, init.stderr
    assert "loom-pending" in (tmp_path / "conf" / "auth.conf").read_text()
    server = start_server(
        [nats_server_binary(), "--config", str(tmp_path / "conf" / "nats.conf")],
        tmp_path / "nats.log",
        lambda: (tmp_path / "run" / "nats.pid").exists(),
        30,
    )
    with (tmp_path / "reload.log").open("wb") as log:
        reloader = subprocess.Popen(
            ["sh", str(script)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        a, c = tenant_identity("a").user, tenant_identity("c").user
        assert not asyncio.run(_connects(port, a)), "nobody connects before the operator's list"
        # The operator writes its list (the kubelet puts it in the mounted Secret): users connect.
        (tmp_path / "auth" / "auth.conf").write_bytes(_auth_conf(("a", "b")))
        _wait(lambda: _connects(port, a), "tenant a admitted after the reload")
        assert asyncio.run(_connects(port, "admin"))
        assert not asyncio.run(_connects(port, c))
        # A changed list: c comes, a goes, without a restart.
        pid = (tmp_path / "run" / "nats.pid").read_text().strip()
        (tmp_path / "auth" / "auth.conf").write_bytes(_auth_conf(("b", "c")))
        _wait(lambda: _connects(port, c), "tenant c admitted after the second reload")
        assert not asyncio.run(_connects(port, a))
        assert server.poll() is None and (tmp_path / "run" / "nats.pid").read_text().strip() == pid
        log_text = (tmp_path / "reload.log").read_text()
        assert len(re.findall("server reloaded", log_text)) == 2, log_text
    finally:
        reloader.terminate()
        reloader.wait(10)
        stop_server(server)
    assert yaml.safe_load(yaml.safe_dump(data))  # the ConfigMap data stays plain YAML
