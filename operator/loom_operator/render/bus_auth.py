"""Bus identities of the pods the operator renders: one NATS user per resource (pure).

Every Worker, Pipeline, RouterPolicy, Schedule and EvalSuite connects to NATS as its own user,
with the permissions of its role from :func:`loom.bus_auth.permissions` (the one rule;
nothing here decides what a role may do). How the identity reaches the pods depends on
``Settings.nats_auth``:

- ``generated``: the operator makes the users. A password is an HMAC of the user name
  under one key (``LOOM_NATS_AUTH_KEY``, a chart-made Secret), so it is the same on every
  reconcile, every operator restart and every upgrade without the operator reading any
  Secret back; rotating the key rotates every password. Each resource gets a Secret
  ``<name>-<component>-nats`` (user, password, inbox prefix) that its pods read through
  ``secretKeyRef``, and the operator writes the server's ``authorization`` block for all
  users (plus the admin and the listed tenants) to one Secret that the bundled NATS includes.
- ``creds``: the user runs NATS with JWT/nkeys accounts and creates, per resource, a Secret
  ``<name>-<component>-nats-creds`` (key ``creds``) holding the ``.creds`` file of a user
  made with the permissions :func:`user_record` lists (``loom render --bus-users``); pods mount it.
- ``none``: no per-resource identity (``nats.credentialsSecret``, if any, is shared by all).

User names are ``<component>_<namespace>_<name>``: Kubernetes names hold no ``_``, so
two resources never share a user, across kinds and namespaces.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import shlex
from collections.abc import Iterable, Sequence
from typing import Any

from loom.api import PipelineSpec, WorkerSpec
from loom.api.eval_suite import EvalSuiteSpec
from loom.api.kinds import KINDS
from loom.bus_auth import (
    Credential,
    Identity,
    Role,
    inbox_prefix,
    permissions,
    server_authorization,
    tenant_identity,
)
from loom_operator.render.common import (
    COMPONENTS,
    CONFIG_DIR,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    Owner,
    RenderError,
    metadata,
)
from loom_operator.settings import Settings

#: The role of each kind's pods on the bus.
ROLES = {k.kind: Role(k.component) for k in KINDS}
ADMIN_USER = "admin"
#: Variables the operator sets for a pod's identity; a resource's own ``env`` may not set them.
IDENTITY_ENV = ("LOOM_NATS_USER", "LOOM_NATS_PASSWORD", "LOOM_NATS_INBOX_PREFIX", "LOOM_NATS_CREDS")
#: Pod-template annotation that changes with the identity, so a new password rolls the pods.
IDENTITY_ANNOTATION = "loom.dev/bus-identity"
#: Key of the server's authorization block in the authorization Secret (the bundled NATS includes it).
AUTH_KEY = "auth.conf"
CREDS_DIR = f"{CONFIG_DIR}/nats/identity"
AUTH_LABEL = "loom.dev/bus-auth"


def user_name(kind: str, namespace: str, name: str) -> str:
    """The NATS user of a resource's pods."""
    return f"{COMPONENTS[kind]}_{namespace}_{name}"


def identity(owner: Owner, spec: Any) -> Identity:
    """The bus identity of a resource: its role and what it serves, from its spec."""
    if owner.namespace is None:
        raise ValueError(f"{owner.kind} {owner.name!r} has no namespace: its bus identity needs one")
    role = ROLES[owner.kind]
    user = user_name(owner.kind, owner.namespace, owner.name)
    if isinstance(spec, WorkerSpec):
        return Identity(user, role, worker_type=spec.worker_type, tiers=tuple(spec.served_tiers))
    if isinstance(spec, PipelineSpec):
        return Identity(user, role, pipeline=spec.pipeline_name)
    if isinstance(spec, EvalSuiteSpec):
        return Identity(user, role, tenant=spec.tenant)
    return Identity(user, role)


def admin_identity() -> Identity:
    """The admin: stream management and dead-letter replay (``loom dead-letter``)."""
    return Identity(ADMIN_USER, Role.ADMIN)


def password(key: str, user: str) -> str:
    """The password of ``user``: an HMAC under ``key``, so it is stable without being stored."""
    if not key:
        raise ValueError("the NATS auth key is empty (LOOM_NATS_AUTH_KEY)")
    digest = hmac.new(key.encode(), b"loom-nats-user\x00" + user.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def credential(ident: Identity, key: str) -> Credential:
    return Credential(ident, password(key, ident.user))


def secret_name(owner: Owner) -> str:
    """The Secret holding a resource's generated identity (in the resource's namespace)."""
    return f"{owner.name}-{COMPONENTS[owner.kind]}-nats"


def creds_secret_name(owner: Owner) -> str:
    """The Secret (key ``creds``) a user provides in ``creds`` mode."""
    return f"{owner.name}-{COMPONENTS[owner.kind]}-nats-creds"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def credential_data(cred: Credential) -> dict[str, str]:
    """Secret ``data`` of one identity: what a client needs to connect as it (base64)."""
    return {
        "user": _b64(cred.identity.user),
        "password": _b64(cred.password),
        "inboxPrefix": _b64(inbox_prefix(cred.identity.user)),
    }


def identity_secret(owner: Owner, cred: Credential) -> dict[str, Any]:
    """The resource's identity Secret, owned by the resource (it goes when the resource goes)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(owner, secret_name(owner)),
        "type": "Opaque",
        "data": credential_data(cred),
    }


def _annotation(blob: str) -> str:
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check_env(owner: Owner, spec: Any) -> None:
    own = getattr(spec, "env", None) or {}
    clash = sorted(k for k in own if k in IDENTITY_ENV)
    if clash:
        raise RenderError(
            f"env {', '.join(clash)} is set by the operator (the {owner.kind}'s bus identity); remove it"
        )


def with_identity(
    objects: Sequence[dict[str, Any]], owner: Owner, spec: Any, settings: Settings
) -> list[dict[str, Any]]:
    """``objects`` with the resource's bus identity wired into every Deployment and Job (and its Secret)."""
    if settings.nats_auth == "none":
        return list(objects)
    _check_env(owner, spec)
    ident = identity(owner, spec)
    prefix: dict[str, Any] = {"name": "LOOM_NATS_INBOX_PREFIX", "value": inbox_prefix(ident.user)}
    env: list[dict[str, Any]]
    extra: list[dict[str, Any]] = []
    volume: dict[str, Any] | None = None
    mount: dict[str, Any] | None = None
    if settings.nats_auth == "generated":
        if not settings.nats_auth_key:
            raise RenderError("NATS auth is 'generated' but no key is set (LOOM_NATS_AUTH_KEY)")
        cred = credential(ident, settings.nats_auth_key)
        name = secret_name(owner)
        env = [
            {"name": "LOOM_NATS_USER", "valueFrom": {"secretKeyRef": {"name": name, "key": "user"}}},
            {"name": "LOOM_NATS_PASSWORD", "valueFrom": {"secretKeyRef": {"name": name, "key": "password"}}},
            prefix,
        ]
        extra.append(identity_secret(owner, cred))
        mark = _annotation(f"{cred.identity.user}\x00{cred.password}")
    elif settings.nats_auth == "creds":
        name = creds_secret_name(owner)
        env = [{"name": "LOOM_NATS_CREDS", "value": f"{CREDS_DIR}/creds"}, prefix]
        volume = {
            "name": "nats-identity",
            "secret": {"secretName": name, "items": [{"key": "creds", "path": "creds"}]},
        }
        mount = {"name": "nats-identity", "mountPath": CREDS_DIR, "readOnly": True}
        mark = _annotation(name)
    else:  # pragma: no cover - Settings.from_env refuses other modes
        raise ValueError(f"unknown NATS auth mode {settings.nats_auth!r}")
    return [
        *extra,
        *(_wire(o, env, mark, volume, mount) if o["kind"] in ("Deployment", "Job") else o for o in objects),
    ]


def _wire(
    dep: dict[str, Any],
    env: list[dict[str, Any]],
    mark: str,
    volume: dict[str, Any] | None,
    mount: dict[str, Any] | None,
) -> dict[str, Any]:
    template = dep["spec"]["template"]
    pod = template["spec"]
    containers = []
    for c in pod["containers"]:
        c = {**c, "env": [e for e in c.get("env", []) if e["name"] not in IDENTITY_ENV] + env}
        if mount is not None:
            c["volumeMounts"] = [*c.get("volumeMounts", []), mount]
        containers.append(c)
    pod = {**pod, "containers": containers}
    if volume is not None:
        pod["volumes"] = [*pod.get("volumes", []), volume]
    meta = template.get("metadata", {})
    annotations = {**meta.get("annotations", {}), IDENTITY_ANNOTATION: mark}
    template = {**template, "metadata": {**meta, "annotations": annotations}, "spec": pod}
    return {**dep, "spec": {**dep["spec"], "template": template}}


def user_record(ident: Identity, owner: Owner | None = None) -> dict[str, Any]:
    """What to create for one identity on your own NATS: its user, permissions and the ``nsc`` command."""
    perms = permissions(ident)
    args = ["nsc", "add", "user", "--name", ident.user, "--allow-pub", ",".join(perms.publish)]
    args += ["--allow-sub", ",".join(perms.subscribe)]
    if perms.publish_deny:
        args += ["--deny-pub", ",".join(perms.publish_deny)]
    out: dict[str, Any] = {"user": ident.user, "role": ident.role.value}
    if owner is not None:
        out["resource"] = f"{owner.kind}/{owner.name}"
        out["namespace"] = owner.namespace
        out["credsSecret"] = creds_secret_name(owner)
    out["inboxPrefix"] = inbox_prefix(ident.user)
    out["permissions"] = perms.as_nats()
    out["nsc"] = shlex.join(args)
    return out


# ------------------------------------------------------------------ server side


def all_identities(resources: Iterable[Identity], tenants: Iterable[str]) -> list[Identity]:
    """Every user of the server: the admin, the tenants and one per resource, sorted (stable output)."""
    out = {i.user: i for i in [*resources, *map(tenant_identity, tenants), admin_identity()]}
    return [out[u] for u in sorted(out)]


def authorization(identities: Iterable[Identity], key: str) -> str:
    """The nats-server ``authorization`` block for these users (passwords derived from ``key``)."""
    return server_authorization([credential(i, key) for i in identities], compact=True)


def _release_secret(settings: Settings, name: str, data: dict[str, str], role: str) -> dict[str, Any]:
    assert settings.nats_auth_secret is not None
    namespace, _ = split_ref(settings.nats_auth_secret)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {NAME_LABEL: "loom", MANAGED_BY_LABEL: MANAGED_BY, AUTH_LABEL: role},
        },
        "type": "Opaque",
        "data": data,
    }


def split_ref(ref: str) -> tuple[str, str]:
    """``namespace/name`` → (namespace, name)."""
    namespace, sep, name = ref.partition("/")
    if not (sep and namespace and name):
        raise ValueError(f"expected namespace/name, got {ref!r} (LOOM_NATS_AUTH_SECRET)")
    return namespace, name


def server_secrets(identities: Iterable[Identity], settings: Settings) -> list[dict[str, Any]]:
    """The authorization Secret (``<name>``, key ``auth.conf``) and the admin's and tenants'
    credential Secrets (``<name>-admin``, ``<name>-tenant-<t>``), in the auth Secret's namespace."""
    if settings.nats_auth != "generated" or settings.nats_auth_secret is None:
        return []
    key = settings.nats_auth_key
    if not key:
        raise ValueError("NATS auth is 'generated' but no key is set (LOOM_NATS_AUTH_KEY)")
    _, base = split_ref(settings.nats_auth_secret)
    users = all_identities(identities, settings.nats_tenants)
    out = [_release_secret(settings, base, {AUTH_KEY: _b64(authorization(users, key))}, "authorization")]
    for ident in users:
        if ident.role is Role.ADMIN:
            name = f"{base}-admin"
        elif ident.role is Role.TENANT:
            name = f"{base}-tenant-{ident.tenant}"
        else:
            continue
        out.append(_release_secret(settings, name, credential_data(credential(ident, key)), ident.role.value))
    return out
