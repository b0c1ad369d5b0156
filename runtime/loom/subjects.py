"""NATS subject, stream and consumer names — the original Loom's subjects, made durable.

Subjects:
  loom.tasks.incoming              router input        (stream LOOM_INCOMING, work queue)
  loom.tasks.<worker_type>.<tier>  worker input        (stream LOOM_TASKS, work queue)
  loom.tasks.dead_letter           dead letters        (stream LOOM_DEAD_LETTER, kept)
  loom.goals.incoming              orchestrator input  (stream LOOM_GOALS, work queue)
  loom.goals.<pipeline>            pipeline input      (stream LOOM_GOALS, work queue)
  loom.results.<id>                results             (core NATS; callers subscribe before publishing)

A tenant other than ``default`` has its own submission and result subjects, so NATS
permissions can tie each to one identity and the router takes the tenant from the
subject, never from the payload (see :mod:`loom.bus_auth`):
  loom.tasks.incoming.tenant.<t>   router input of tenant t  (stream LOOM_INCOMING)
  loom.goals.<pipeline>.tenant.<t> goals of tenant t         (stream LOOM_GOALS)
  loom.results.tenant.<t>.<id>     results of tenant t
The default tenant keeps the original subjects above.
"""

from __future__ import annotations

import re

TASKS_INCOMING = "loom.tasks.incoming"
DEAD_LETTER = "loom.tasks.dead_letter"
GOALS_INCOMING = "loom.goals.incoming"
#: What every goal subject starts with (pipelines' and the orchestrator's).
GOALS_PREFIX = "loom.goals."
RESULTS_PREFIX = "loom.results"
#: The tenant every message without a tenant subject belongs to.
DEFAULT_TENANT = "default"
#: The token that marks a tenant's own subjects (``....tenant.<name>``).
TENANT_MARK = "tenant"

STREAM_INCOMING = "LOOM_INCOMING"
STREAM_TASKS = "LOOM_TASKS"
STREAM_DEAD_LETTER = "LOOM_DEAD_LETTER"
STREAM_GOALS = "LOOM_GOALS"
#: Stream that captures MAX_DELIVERIES advisories durably, consumed by the routers' shared durable.
STREAM_ADVISORIES = "LOOM_ADVISORIES"
ADVISORY_CONSUMER = "router-advisories"
#: The audit trail: one record per task and goal outcome on ``loom.audit.<tenant>`` (a limits stream).
STREAM_AUDIT = "LOOM_AUDIT"
AUDIT_PREFIX = "loom.audit"

#: The router's one shared durable consumer: N replicas never route a task twice.
ROUTER_CONSUMER = "router"

#: Longest id that may become one subject token (task and goal ids, worker types, tiers, pipelines).
MAX_TOKEN = 128
#: Longest dotted task id (a stage or subtask id: ``<goal id>.<stage>.<attempt>``).
MAX_DOTTED_ID = 256
#: Longest subject the bus publishes to. NATS closes the connection when a control line
#: (``PUB <subject> <reply> <size>``) passes its ``max_control_line`` (4 KiB by default);
#: this bound keeps every line far below that.
MAX_SUBJECT = 512

_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
_BAD_SUBJECT_CHAR = re.compile(r"[\s*>\x00-\x1f\x7f]")


class InvalidSubject(ValueError):
    """A subject or subject token the bus refuses: it would break routing or the connection."""


def token_problem(value: object, what: str) -> str | None:
    """Why ``value`` cannot be one subject token, or None when it can. The one rule for ids in subjects."""
    if not isinstance(value, str):
        return f"{what} must be a string, not {type(value).__name__}"
    if not value:
        return f"{what} must not be empty"
    if len(value) > MAX_TOKEN:
        return f"{what} is {len(value)} characters long; at most {MAX_TOKEN} are allowed"
    if not _TOKEN.match(value):
        bad = sorted({c for c in value if not (c.isascii() and (c.isalnum() or c in "_-"))})
        shown = " ".join(repr(c) for c in bad[:5])
        return f"{what} {value[:60]!r} may hold only letters, digits, _ and - (not {shown})"
    return None


def dotted_id_problem(value: object, what: str) -> str | None:
    """Why ``value`` is not a dotted id (tokens joined by ``.``, as stage task ids are), or None."""
    if not isinstance(value, str):
        return f"{what} must be a string, not {type(value).__name__}"
    if len(value) > MAX_DOTTED_ID:
        return f"{what} is {len(value)} characters long; at most {MAX_DOTTED_ID} are allowed"
    for part in value.split("."):
        problem = token_problem(part, what)
        if problem is not None:
            return problem if part else f"{what} {value[:60]!r} has an empty part between dots"
    return None


def check_token(value: str, what: str) -> str:
    """``value`` when it is a valid subject token; raises :class:`InvalidSubject` saying why not."""
    problem = token_problem(value, what)
    if problem is not None:
        raise InvalidSubject(problem)
    return value


def task_id_problem(task_id: object, parent_task_id: object) -> str | None:
    """Why a task's ids cannot be carried, or None.

    The result key (``parent_task_id``, else ``task_id``) becomes ``loom.results.<key>``
    and must be one token; a task with a parent may use a dotted id (``<goal>.<stage>.<n>``).
    """
    if parent_task_id is not None:
        return token_problem(parent_task_id, "parent_task_id") or dotted_id_problem(task_id, "task_id")
    problem = token_problem(task_id, "task_id")
    if problem is not None and isinstance(task_id, str) and "." in task_id:
        problem += " (it becomes the result subject loom.results.<task_id>)"
    return problem


def check_publish_subject(subject: str) -> str:
    """``subject`` when the bus may publish to it; raises :class:`InvalidSubject` saying why not.

    No wildcards, whitespace or control characters, no empty tokens, at most :data:`MAX_SUBJECT`.
    """
    if not subject:
        raise InvalidSubject("subject must not be empty")
    if len(subject) > MAX_SUBJECT:
        raise InvalidSubject(
            f"subject {subject[:60]!r}... is {len(subject)} characters; at most {MAX_SUBJECT}"
        )
    bad = _BAD_SUBJECT_CHAR.search(subject)
    if bad is not None:
        raise InvalidSubject(
            f"subject {subject[:60]!r} holds {bad.group()!r}, which a published subject may not"
        )
    if "" in subject.split("."):
        raise InvalidSubject(f"subject {subject[:60]!r} has an empty token")
    return subject


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether ``subject`` matches a NATS filter ``pattern`` (``*`` one token, ``>`` the rest)."""
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


def task_subject(worker_type: str, tier: str) -> str:
    """Where the router sends tasks for a worker type on a tier."""
    return f"loom.tasks.{check_token(worker_type, 'worker type')}.{check_token(tier, 'tier')}"


def worker_consumer(worker_type: str, tier: str) -> str:
    """The durable pull consumer shared by all replicas of one (worker type, tier)."""
    return f"worker-{check_token(worker_type, 'worker type')}-{check_token(tier, 'tier')}"


def goal_subject(pipeline: str | None, tenant: str = DEFAULT_TENANT) -> str:
    """Goals for a pipeline, or for the dynamic orchestrator when ``pipeline`` is None; a tenant's own."""
    base = f"loom.goals.{check_token(pipeline, 'pipeline')}" if pipeline else GOALS_INCOMING
    return base if tenant == DEFAULT_TENANT else f"{base}.{TENANT_MARK}.{check_token(tenant, 'tenant')}"


def goal_filters(pipeline: str | None) -> list[str]:
    """The filter subjects of a pipeline's (or the orchestrator's) goal consumer: every tenant's goals."""
    base = goal_subject(pipeline)
    return [base, f"{base}.{TENANT_MARK}.*"]


def incoming_subject(tenant: str = DEFAULT_TENANT) -> str:
    """Where tasks of ``tenant`` go to the router."""
    if tenant == DEFAULT_TENANT:
        return TASKS_INCOMING
    return f"{TASKS_INCOMING}.{TENANT_MARK}.{check_token(tenant, 'tenant')}"


#: Every subject of router input (the default tenant's and each tenant's own).
INCOMING_SUBJECTS = (TASKS_INCOMING, f"{TASKS_INCOMING}.{TENANT_MARK}.*")


def tenant_of_subject(subject: str) -> str:
    """The tenant a submission subject belongs to: the token after ``tenant``, else the default tenant.

    The one rule by which the router and the goal runners take the tenant from
    the subject (which NATS permissions tie to an identity), never from the payload.
    """
    return named_tenant(subject) or DEFAULT_TENANT


def named_tenant(subject: str) -> str | None:
    """The tenant a submission subject names (``...tenant.<t>``); None when it names none."""
    parts = subject.split(".")
    if len(parts) >= 2 and parts[-2] == TENANT_MARK and parts[0] == "loom" and parts[1] in ("tasks", "goals"):
        return parts[-1]
    return None


def goal_consumer(pipeline: str | None) -> str:
    """The durable consumer shared by all replicas of one pipeline (or the orchestrator)."""
    return f"goals-{check_token(pipeline, 'pipeline')}" if pipeline else "goals-orchestrator"


def result_subject(result_key: str, tenant: str = DEFAULT_TENANT) -> str:
    """Where results for a task or goal id are published: the default tenant's, or a tenant's own."""
    key = check_token(result_key, "result id")
    if tenant == DEFAULT_TENANT:
        return f"{RESULTS_PREFIX}.{key}"
    return f"{RESULTS_PREFIX}.{TENANT_MARK}.{check_token(tenant, 'tenant')}.{key}"
