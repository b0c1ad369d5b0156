"""Who may do what on the bus: NATS publish/subscribe permissions per role, rendered in one place.

``loom up`` (its embedded nats-server), the chart's bundled NATS and anyone who runs
their own NATS (user JWTs made with ``nsc``) take the permissions from here, so the
rule is written once:

- a **tenant** publishes only to its own submission subjects
  (:func:`loom.subjects.incoming_subject`, :func:`loom.subjects.goal_subject`) and reads
  only its own results (:func:`loom.subjects.result_subject`); the router and the goal
  runners take the tenant from that subject, never from the payload;
- the **router** alone consumes router input and publishes to worker subjects;
- a **worker** consumes only its own (type, tier) consumers;
- pipelines, the orchestrator and the scheduler submit for any tenant (they act for one);
- only the **admin** (the operator, ``loom up``, ``loom dead-letter``) may delete or purge
  streams, delete stored messages other than the router's, or replay dead letters.

Every identity reads replies only under its own inbox prefix (``_INBOX_<user>``), so
nobody sees another's JetStream deliveries. Internal roles may declare (create or
update) Loom's streams and their own Key-Value buckets, never delete or purge them.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from enum import StrEnum

from loom.subjects import (
    ADVISORY_CONSUMER,
    AUDIT_PREFIX,
    DEAD_LETTER,
    DEFAULT_TENANT,
    INCOMING_SUBJECTS,
    RESULTS_PREFIX,
    ROUTER_CONSUMER,
    STREAM_ADVISORIES,
    STREAM_AUDIT,
    STREAM_DEAD_LETTER,
    STREAM_GOALS,
    STREAM_INCOMING,
    STREAM_TASKS,
    TENANT_MARK,
    check_token,
    goal_consumer,
    incoming_subject,
    worker_consumer,
)

#: Streams the runtime declares (kept in step with ``loom.bus``; a test compares them).
LOOM_STREAMS = (STREAM_INCOMING, STREAM_TASKS, STREAM_DEAD_LETTER, STREAM_GOALS, STREAM_ADVISORIES)
#: Key-Value buckets by the role that keeps state in them.
PIPELINE_BUCKETS = ("loom-pipeline-state", "loom-checkpoints")
SCHEDULER_BUCKETS = ("loom-schedules",)
WORKER_BUCKETS = ("loom-checkpoints",)
#: Limits and budgets shared by the router replicas.
ROUTER_BUCKETS = ("loom-router-limits", "loom-router-budgets")


class Role(StrEnum):
    """What an identity on the bus is for."""

    ADMIN = "admin"
    ROUTER = "router"
    WORKER = "worker"
    PIPELINE = "pipeline"
    ORCHESTRATOR = "orchestrator"
    SCHEDULER = "scheduler"
    TENANT = "tenant"
    #: An EvalSuite's Job: submits its cases as one tenant and reads their results, like a tenant.
    EVAL = "eval"


#: Roles that write audit records (see :mod:`loom.audit` for who writes what); reading is the admin's.
AUDIT_WRITERS = frozenset({Role.ROUTER, Role.WORKER, Role.PIPELINE, Role.ORCHESTRATOR})


@dataclass(frozen=True)
class Identity:
    """One NATS user: its name, role and what it serves (worker type and tiers, pipeline, tenant)."""

    user: str
    role: Role
    tenant: str = DEFAULT_TENANT
    worker_type: str | None = None
    tiers: tuple[str, ...] = ()
    pipeline: str | None = None

    def __post_init__(self) -> None:
        check_token(self.user, "NATS user name")
        check_token(self.tenant, "tenant")
        if self.role is Role.WORKER and not (self.worker_type and self.tiers):
            raise ValueError(f"worker identity {self.user!r} needs a worker type and at least one tier")
        if self.role is Role.PIPELINE and not self.pipeline:
            raise ValueError(f"pipeline identity {self.user!r} needs a pipeline name")


@dataclass(frozen=True)
class Permissions:
    """NATS publish/subscribe allow and deny lists of one identity."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()

    def as_nats(self) -> dict[str, dict[str, list[str]]]:
        """The ``permissions`` block of a nats-server user (also the shape ``nsc`` user JWTs take)."""
        pub: dict[str, list[str]] = {"allow": list(self.publish)}
        if self.publish_deny:
            pub["deny"] = list(self.publish_deny)
        return {"publish": pub, "subscribe": {"allow": list(self.subscribe)}}


def tenant_identity(tenant: str) -> Identity:
    """A submitter of one tenant, user ``tenant_<t>`` (on a cluster and in local mode alike)."""
    return Identity(f"tenant_{tenant}", Role.TENANT, tenant=tenant)


def inbox_prefix(user: str) -> str:
    """The reply-subject prefix of ``user``: the only inbox it may subscribe to."""
    return f"_INBOX_{check_token(user, 'NATS user name')}"


#: Nobody but the admin removes streams, their messages or consumers.
_ADMIN_ONLY = (
    "$JS.API.STREAM.DELETE.>",
    "$JS.API.STREAM.PURGE.>",
    "$JS.API.CONSUMER.DELETE.>",
)


def _consumer(stream: str, name: str) -> list[str]:
    """Create, pull from and acknowledge on one durable consumer."""
    return [
        f"$JS.API.CONSUMER.CREATE.{stream}.{name}",
        f"$JS.API.CONSUMER.CREATE.{stream}.{name}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{name}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}",
        f"$JS.ACK.{stream}.{name}.>",
    ]


def _bucket(bucket: str) -> list[str]:
    """Declare and use one Key-Value bucket (its stream is ``KV_<bucket>``)."""
    stream = f"KV_{bucket}"
    return [
        f"$KV.{bucket}.>",
        f"$JS.API.STREAM.CREATE.{stream}",
        f"$JS.API.STREAM.UPDATE.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
    ]


def _declare_and_read() -> list[str]:
    """What every internal role needs: declare Loom's streams, read stream and consumer state."""
    out = ["$JS.API.INFO", "$JS.API.STREAM.INFO.*", "$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST"]
    for s in (*LOOM_STREAMS, STREAM_AUDIT):
        out += [f"$JS.API.STREAM.CREATE.{s}", f"$JS.API.STREAM.UPDATE.{s}"]
    out += ["$JS.API.CONSUMER.INFO.*.*", "$JS.API.CONSUMER.LIST.*", "$JS.API.CONSUMER.NAMES.*"]
    return out


def permissions(identity: Identity) -> Permissions:
    """The publish/subscribe permissions of ``identity``: the one rule every deployment uses."""
    me = identity
    inbox = f"{inbox_prefix(me.user)}.>"
    if me.role is Role.ADMIN:
        return Permissions(publish=(">",), subscribe=(">",))
    if me.role in (Role.TENANT, Role.EVAL):
        return _tenant(me.tenant, inbox)
    pub = _declare_and_read()
    if me.role in AUDIT_WRITERS:
        pub.append(f"{AUDIT_PREFIX}.>")
    sub = [inbox]
    if me.role is Role.ROUTER:
        pub += ["loom.tasks.*.*", f"{RESULTS_PREFIX}.>", DEAD_LETTER]
        pub += _consumer(STREAM_INCOMING, ROUTER_CONSUMER) + _consumer(STREAM_ADVISORIES, ADVISORY_CONSUMER)
        pub += ["$JS.API.STREAM.MSG.GET.*", "$JS.API.DIRECT.GET.*", "$JS.API.DIRECT.GET.*.>"]
        pub += [f"$JS.API.STREAM.MSG.DELETE.{s}" for s in (STREAM_INCOMING, STREAM_TASKS, STREAM_GOALS)]
        sub.append(f"{RESULTS_PREFIX}.>")  # results release the router's concurrency slots
        for b in ROUTER_BUCKETS:
            pub += _bucket(b)
    elif me.role is Role.WORKER:
        assert me.worker_type is not None
        pub += [f"{RESULTS_PREFIX}.>", DEAD_LETTER]
        for tier in me.tiers:
            pub += _consumer(STREAM_TASKS, worker_consumer(me.worker_type, tier))
        for b in WORKER_BUCKETS:
            pub += _bucket(b)
    elif me.role in (Role.PIPELINE, Role.ORCHESTRATOR):
        name = goal_consumer(me.pipeline if me.role is Role.PIPELINE else None)
        pub += [*INCOMING_SUBJECTS, f"{RESULTS_PREFIX}.>", DEAD_LETTER, *_consumer(STREAM_GOALS, name)]
        for b in PIPELINE_BUCKETS:
            pub += _bucket(b)
        sub.append(f"{RESULTS_PREFIX}.>")  # stage results of the goals it runs, for any tenant
    elif me.role is Role.SCHEDULER:
        pub += [*INCOMING_SUBJECTS, "loom.goals.>"]
        for b in SCHEDULER_BUCKETS:
            pub += _bucket(b)
    else:  # pragma: no cover - every Role is handled above
        raise ValueError(f"no permissions for role {me.role!r}")
    return Permissions(publish=tuple(pub), subscribe=tuple(sub), publish_deny=_ADMIN_ONLY)


def _tenant(tenant: str, inbox: str) -> Permissions:
    """A submitter of one tenant: its own submission subjects and results, nothing else."""
    if tenant == DEFAULT_TENANT:
        goals, results = ["loom.goals.*"], [f"{RESULTS_PREFIX}.*"]
    else:
        goals = [f"loom.goals.*.{TENANT_MARK}.{tenant}"]
        results = [f"{RESULTS_PREFIX}.{TENANT_MARK}.{tenant}.*"]
    pub = [
        incoming_subject(tenant),
        *goals,
        # read-only JetStream API: declare-if-missing checks and `loom submit`'s goal target
        "$JS.API.INFO",
        "$JS.API.STREAM.INFO.*",
        f"$JS.API.CONSUMER.LIST.{STREAM_GOALS}",
        f"$JS.API.CONSUMER.NAMES.{STREAM_GOALS}",
    ]
    return Permissions(publish=tuple(pub), subscribe=(inbox, *results), publish_deny=_ADMIN_ONLY)


@dataclass(frozen=True)
class Credential:
    """An identity with its password: what a process needs to connect as it."""

    identity: Identity
    password: str = field(repr=False)

    @property
    def env(self) -> dict[str, str]:
        """The ``LOOM_NATS_*`` variables a role reads to connect as this identity."""
        return {
            "LOOM_NATS_USER": self.identity.user,
            "LOOM_NATS_PASSWORD": self.password,
            "LOOM_NATS_INBOX_PREFIX": inbox_prefix(self.identity.user),
        }


def new_credential(identity: Identity) -> Credential:
    """A fresh random password for ``identity``: 192 bits in hex, so it never starts with ``-`` (a
    command line would read such a password, given as ``--nats-password PASSWORD``, as an option)."""
    return Credential(identity, secrets.token_hex(24))


def server_authorization(credentials: list[Credential], *, compact: bool = False) -> str:
    """The ``authorization`` block of a nats-server configuration for these users.

    NATS configuration accepts JSON values, so the block is JSON: quoted strings keep
    ``$JS...`` subjects from being read as variables. ``compact`` drops the indentation
    (a third of the size), for a block that must fit in a Kubernetes Secret.
    """
    seen: set[str] = set()
    users = []
    for c in credentials:
        if c.identity.user in seen:
            raise ValueError(f"NATS user {c.identity.user!r} is listed twice")
        seen.add(c.identity.user)
        users.append(
            {
                "user": c.identity.user,
                "password": c.password,
                "permissions": permissions(c.identity).as_nats(),
            }
        )
    doc = {"users": users}
    body = json.dumps(doc, separators=(",", ":")) if compact else json.dumps(doc, indent=2)
    return "authorization: " + body + "\n"
