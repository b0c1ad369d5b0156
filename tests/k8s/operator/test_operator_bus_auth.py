"""Generated bus identities on a real API server: the operator (chart RBAC: Secrets create/patch,
never read) writes each resource's identity Secret and the NATS server's user list, keeps
passwords across reconciles, and drops a deleted resource's user."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.k8s.envtest import ControlPlane
from tests.k8s.operator.conftest import Loom, OperatorProcess, operator_env, running_operator, wait_for
from tests.support.nats_server import NatsServer

pytestmark = [pytest.mark.k8s]

AUTH_NS = "loom-bus-auth"
AUTH_SECRET = "loom-nats-auth"
KEY = "test-key-" * 5


@pytest.fixture(scope="module")
def auth_operator(
    sa_kubeconfig: Path, operator_nats: NatsServer, control_plane: ControlPlane
) -> Iterator[OperatorProcess]:
    """An operator in generated mode, writing the user list to ``loom-bus-auth/loom-nats-auth``."""
    with control_plane.api_client() as api, contextlib.suppress(ApiException):
        client.CoreV1Api(api).create_namespace({"metadata": {"name": AUTH_NS}})
    env = {
        **operator_env(operator_nats),
        "LOOM_NATS_AUTH": "generated",
        "LOOM_NATS_AUTH_KEY": KEY,
        "LOOM_NATS_AUTH_SECRET": f"{AUTH_NS}/{AUTH_SECRET}",
        "LOOM_NATS_TENANTS": "a",
    }
    with running_operator(sa_kubeconfig, env, "auth") as op:
        yield op


def decoded(secret: client.V1Secret) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


def server_users(core: client.CoreV1Api) -> dict[str, str]:
    """User → password in the server's user list (empty before the operator wrote it)."""
    try:
        secret = core.read_namespaced_secret(AUTH_SECRET, AUTH_NS)
    except ApiException as exc:
        if exc.status == 404:
            return {}
        raise
    text = decoded(secret)["auth.conf"].removeprefix("authorization: ")
    return {u["user"]: u["password"] for u in json.loads(text)["users"]}


def test_identities_follow_resources_and_keep_their_passwords(
    auth_operator: OperatorProcess, loom: Loom
) -> None:
    ns = loom.ns
    loom.create("RouterPolicy", "default", {"tiers": [{"name": "local", "backend": "local"}]})
    loom.create(
        "Worker", "summ", {"systemPrompt": "Summarize.", "tiers": ["local"], "defaultModelTier": "local"}
    )
    loom.wait_ready("Worker", "summ")
    loom.wait_ready("RouterPolicy", "default")

    identity = decoded(loom.core.read_namespaced_secret("summ-worker-nats", ns))
    assert identity["user"] == f"worker_{ns}_summ"
    assert identity["inboxPrefix"] == f"_INBOX_worker_{ns}_summ"
    dep = loom.deployments("loom.dev/worker=summ")["summ-local"]
    env = {e.name: e for e in dep.spec.template.spec.containers[0].env}
    assert env["LOOM_NATS_USER"].value_from.secret_key_ref.name == "summ-worker-nats"
    assert env["LOOM_NATS_PASSWORD"].value_from.secret_key_ref.key == "password"
    assert env["LOOM_NATS_INBOX_PREFIX"].value == identity["inboxPrefix"]

    def listed() -> dict[str, str] | None:
        users = server_users(loom.core)
        return users if {identity["user"], f"router_{ns}_default"} <= set(users) else None

    users = wait_for(listed, 30, what="the worker and router in the NATS user list")
    assert users[identity["user"]] == identity["password"]
    assert {"admin", "tenant_a"} <= set(users)
    tenant = decoded(loom.core.read_namespaced_secret(f"{AUTH_SECRET}-tenant-a", AUTH_NS))
    assert tenant["password"] == users["tenant_a"] and tenant["user"] == "tenant_a"

    # A spec change reconciles the Worker: same user, same password, in its Secret and the list.
    loom.patch("Worker", "summ", {"replicas": 2})
    loom.wait_ready("Worker", "summ")
    assert decoded(loom.core.read_namespaced_secret("summ-worker-nats", ns)) == identity
    assert server_users(loom.core)[identity["user"]] == identity["password"]

    # A deleted Worker's user leaves the list; the others stay as they were.
    loom.delete("Worker", "summ")
    wait_for(lambda: identity["user"] not in server_users(loom.core), 30, what="the worker's user removed")
    after = server_users(loom.core)
    assert after[f"router_{ns}_default"] == users[f"router_{ns}_default"]
