"""Bus identities the operator renders: a NATS user per resource, wired into its pods (no cluster)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from loom.api import load_paths
from loom.bus_auth import Role, inbox_prefix, permissions
from loom_operator.cli.render_cmd import render_resources
from loom_operator.render.bus_auth import (
    AUTH_KEY,
    IDENTITY_ANNOTATION,
    all_identities,
    password,
    server_secrets,
    tenant_identity,
)
from loom_operator.render.worker import scaled_object
from loom_operator.settings import Settings

SAMPLES = Path(__file__).resolve().parents[3] / "config" / "samples"
KEY = "k" * 32
GENERATED = Settings(
    image="example.org/loom:test",
    nats_auth="generated",
    nats_auth_key=KEY,
    nats_auth_secret="loom-system/loom-nats-auth",
    nats_tenants=("a", "b"),
)


def render(settings: Settings, namespace: str = "team-a") -> dict[str, list[dict[str, Any]]]:
    return render_resources(load_paths([SAMPLES]), settings, keda=False, namespace=namespace)


def decoded(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def deployments(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == "Deployment"]


def env_of(dep: dict[str, Any]) -> dict[str, Any]:
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def test_every_deployment_connects_as_its_resource_from_its_secret() -> None:
    out = render(GENERATED)
    users = set()
    for key, objects in out.items():
        secrets = [o for o in objects if o["kind"] == "Secret"]
        assert len(secrets) == 1, key
        secret = secrets[0]
        data = decoded(secret)
        users.add(data["user"])
        assert secret["metadata"]["namespace"] == "team-a"
        assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "loom-operator"
        assert data["inboxPrefix"] == inbox_prefix(data["user"])
        assert data["password"] == password(KEY, data["user"])
        for dep in deployments(objects):
            env = env_of(dep)
            ref = secret["metadata"]["name"]
            assert env["LOOM_NATS_USER"] == {"secretKeyRef": {"name": ref, "key": "user"}}
            assert env["LOOM_NATS_PASSWORD"] == {"secretKeyRef": {"name": ref, "key": "password"}}
            assert env["LOOM_NATS_INBOX_PREFIX"] == data["inboxPrefix"]
            assert data["password"] not in json.dumps(dep), "the password stays in the Secret"
            kubernetes_validate.validate(dep, "1.33", strict=True)
        kubernetes_validate.validate(secret, "1.33", strict=True)
    # One user per resource, named by component, namespace and name.
    assert len(users) == len(out)
    assert "worker_team-a_doc-summarizer" in users
    assert "router_team-a_default" in users


def test_passwords_are_stable_per_user_and_key() -> None:
    first = render(GENERATED)
    again = render(GENERATED)
    assert first == again
    assert password(KEY, "u1") != password(KEY, "u2")
    assert password(KEY, "u1") != password("other-key-" * 3, "u1")
    other_ns = render(GENERATED, namespace="team-b")
    a = decoded(next(o for o in first["worker-doc-summarizer"] if o["kind"] == "Secret"))
    b = decoded(next(o for o in other_ns["worker-doc-summarizer"] if o["kind"] == "Secret"))
    assert a["user"] != b["user"] and a["password"] != b["password"]


def test_a_new_key_rolls_the_pods() -> None:
    from dataclasses import replace

    before = deployments(render(GENERATED)["worker-doc-summarizer"])[0]
    after = deployments(render(replace(GENERATED, nats_auth_key="x" * 32))["worker-doc-summarizer"])[0]
    annotation = before["spec"]["template"]["metadata"]["annotations"][IDENTITY_ANNOTATION]
    assert annotation != after["spec"]["template"]["metadata"]["annotations"][IDENTITY_ANNOTATION]


def test_a_resource_may_not_set_its_own_identity(tmp_path: Path) -> None:
    (tmp_path / "w.yaml").write_text(
        "apiVersion: loom.dev/v1alpha1\nkind: Worker\nmetadata: {name: w}\n"
        "spec: {systemPrompt: x, tiers: [local], defaultModelTier: local, env: {LOOM_NATS_USER: admin}}\n"
    )
    with pytest.raises(ValueError, match="LOOM_NATS_USER is set by the operator"):
        render_resources(load_paths([tmp_path]), GENERATED, keda=False, namespace="ns")


def test_creds_mode_mounts_a_creds_file_per_resource() -> None:
    settings = Settings(nats_auth="creds")
    objects = render(settings)["worker-doc-summarizer"]
    assert not [o for o in objects if o["kind"] == "Secret"]
    for dep in deployments(objects):
        env = env_of(dep)
        assert env["LOOM_NATS_CREDS"] == "/etc/loom/nats/identity/creds"
        assert env["LOOM_NATS_INBOX_PREFIX"] == inbox_prefix("worker_team-a_doc-summarizer")
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        assert volumes["nats-identity"]["secret"]["secretName"] == "doc-summarizer-worker-nats-creds"
        assert "LOOM_NATS_USER" not in env


def test_none_mode_renders_no_identity() -> None:
    objects = render(Settings())["worker-doc-summarizer"]
    assert not [o for o in objects if o["kind"] == "Secret"]
    assert all("LOOM_NATS_USER" not in env_of(d) for d in deployments(objects))


def test_server_secrets_hold_every_user_with_the_one_rule() -> None:
    resources = load_paths([SAMPLES])
    idents = []
    from loom_operator.render.bus_auth import identity
    from loom_operator.render.common import Owner

    for r in resources:
        idents.append(identity(Owner(r.kind, r.name, "team-a"), r.spec))
    objects = server_secrets(idents, GENERATED)
    names = [o["metadata"]["name"] for o in objects]
    assert names == [
        "loom-nats-auth",
        "loom-nats-auth-admin",
        "loom-nats-auth-tenant-a",
        "loom-nats-auth-tenant-b",
    ]
    assert {o["metadata"]["namespace"] for o in objects} == {"loom-system"}
    text = decoded(objects[0])[AUTH_KEY]
    block = json.loads(text.removeprefix("authorization: "))
    users = {u["user"]: u for u in block["users"]}
    for ident in all_identities(idents, GENERATED.nats_tenants):
        assert users[ident.user]["permissions"] == permissions(ident).as_nats(), ident.user
        assert users[ident.user]["password"] == password(KEY, ident.user)
    assert {i.role for i in all_identities(idents, ())} >= {Role.ADMIN, Role.ROUTER, Role.WORKER}
    tenant_b = decoded(objects[3])
    assert tenant_b["user"] == tenant_identity("b").user == "tenant_b"
    assert tenant_b["password"] == password(KEY, "tenant_b")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LOOM_NATS_AUTH": "on"}, "LOOM_NATS_AUTH must be one of"),
        ({"LOOM_NATS_AUTH": "generated"}, "needs LOOM_NATS_AUTH_KEY"),
        ({"LOOM_NATS_AUTH": "creds", "LOOM_NATS_CREDS_SECRET": "c"}, "cannot be combined"),
        ({"LOOM_NATS_TENANTS": "a,B_x"}, "'B_x' must be lower-case"),
        ({"LOOM_NATS_AUTH_SECRET": "no-namespace"}, "namespace/name"),
    ],
)
def test_settings_refuse_bad_auth_configuration(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


def test_settings_read_auth_and_account() -> None:
    s = Settings.from_env(
        {
            "LOOM_NATS_AUTH": "generated",
            "LOOM_NATS_AUTH_KEY": KEY,
            "LOOM_NATS_AUTH_SECRET": "ns/auth",
            "LOOM_NATS_TENANTS": "b, a",
            "LOOM_NATS_ACCOUNT": "LOOM",
        }
    )
    assert (s.nats_auth, s.nats_auth_secret, s.nats_tenants, s.nats_account) == (
        "generated",
        "ns/auth",
        ("a", "b"),
        "LOOM",
    )
    assert KEY not in repr(s)
    assert Settings.from_env({}).nats_account == "$G"


def test_keda_trigger_names_the_configured_account() -> None:
    (worker,) = [r for r in load_paths([SAMPLES]) if r.name == "doc-summarizer"]
    from loom_operator.render.common import Owner

    owner = Owner("Worker", "doc-summarizer", "team-a")
    assert (
        scaled_object(owner, worker.spec, "local", Settings())["spec"]["triggers"][0]["metadata"]["account"]
        == "$G"
    )
    obj = scaled_object(owner, worker.spec, "local", Settings(nats_account="TEAM_A"))
    assert obj["spec"]["triggers"][0]["metadata"]["account"] == "TEAM_A"


def test_render_bus_users_lists_what_to_create_on_your_own_nats(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse
    import shlex

    import yaml

    from loom_operator.cli import render_cmd

    monkeypatch.setenv("LOOM_NATS_TENANTS", "a")
    parser = argparse.ArgumentParser()
    render_cmd.add_arguments(parser)
    assert render_cmd.run(parser.parse_args([str(SAMPLES), "-n", "team", "--bus-users"])) == 0
    records = {r["user"]: r for r in yaml.safe_load_all(capsys.readouterr().out)}
    from loom_operator.render.bus_auth import identity
    from loom_operator.render.common import Owner

    for r in load_paths([SAMPLES]):
        owner = Owner(r.kind, r.name, "team")
        ident = identity(owner, r.spec)
        rec = records.pop(ident.user)
        assert rec["permissions"] == permissions(ident).as_nats()
        assert (
            rec["credsSecret"]
            == f"{r.name}-{rec['role']}-nats-creds"  # each kind's role is its component name
        )
        args = shlex.split(rec["nsc"])
        assert args[:5] == ["nsc", "add", "user", "--name", ident.user]
        assert args[args.index("--allow-pub") + 1].split(",") == list(permissions(ident).publish)
        assert args[args.index("--deny-pub") + 1].split(",") == list(permissions(ident).publish_deny)
    assert sorted(records) == ["admin", "tenant_a"]


def test_the_user_list_of_500_workers_fits_in_one_secret() -> None:
    """A Secret's data holds at most 1 MiB (decoded): the compact block fits about 500 Workers."""
    from loom.bus_auth import Identity, server_authorization
    from loom_operator.render.bus_auth import authorization, credential

    idents = [
        Identity(
            f"worker_team-{i % 7}_summarizer-{i}",
            Role.WORKER,
            worker_type=f"summarizer-{i}",
            tiers=("local", "standard"),
        )
        for i in range(500)
    ]
    text = authorization(idents, KEY)
    assert len(text.encode()) < 1024 * 1024
    pretty = server_authorization([credential(i, KEY) for i in idents])
    assert json.loads(text.removeprefix("authorization: ")) == json.loads(
        pretty.removeprefix("authorization: ")
    )


@pytest.mark.parametrize("command", ["render", "operator"])
def test_a_bad_auth_setting_stops_the_command_with_its_message(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from loom_operator.cli import operator_cmd, render_cmd

    monkeypatch.setenv("LOOM_NATS_AUTH", "generated")
    monkeypatch.delenv("LOOM_NATS_AUTH_KEY", raising=False)
    module = render_cmd if command == "render" else operator_cmd
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    argv = [str(SAMPLES)] if command == "render" else []
    assert module.run(parser.parse_args(argv)) == 2
    assert f"loom {command}: LOOM_NATS_AUTH=generated needs LOOM_NATS_AUTH_KEY" in capsys.readouterr().err
