"""Object names: which resource names the operator can turn into Kubernetes objects, and how a
plain-Loom ``name`` becomes one.

The operator names every child after its resource: ``<name>-config`` (ConfigMap), for a Worker one
Deployment ``<name>-<tier>`` per tier (and a KEDA ScaledObject of that name, which KEDA copies into
a label value, so at most 63 characters) and a Service ``<name>-metrics`` (a DNS-1035 label: it
must start with a letter); ``<name>-pipeline``, ``<name>-router`` and ``<name>-scheduler``
Deployments for the other kinds; and ``loom.dev/<kind>: <name>`` labels. So a name must be a
DNS-1035 label short enough that the longest child name still fits in 63 characters.

The original Loom's names (``entity_extractor``) are worker types and pipeline names, and keep that
role (subjects, consumers, ``worker_type`` in tasks); only the object name is mapped, by
:func:`object_name`, the same way for ``loom render``, the operator's generated manifests,
``loom new`` and local mode.
"""

from __future__ import annotations

import hashlib
import re

from loom.api.kinds import KINDS

#: Kubernetes label values and DNS-1035 labels (Service names) are at most this long.
LABEL_MAX_LENGTH = 63
#: A DNS-1035 label: lower-case letters, digits and ``-``; starts with a letter, ends alphanumeric.
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
_NAME_RE = re.compile(NAME_PATTERN)

#: The longest name of each kind whose every child name still fits in 63 characters.
MAX_NAME_LENGTH: dict[str, int] = {
    k.kind: LABEL_MAX_LENGTH - max(len(s) for s in k.child_suffixes) for k in KINDS
}
#: The longest name any kind accepts (for rules that do not know the kind).
MIN_MAX_NAME_LENGTH = min(MAX_NAME_LENGTH.values())

_HASH_LENGTH = 8
_PREFIX = "loom-"


def name_problem(kind: str, name: str) -> str | None:
    """Why ``name`` cannot be the object name of a ``kind`` resource, with the name to use instead.

    None when it can. The message is the one ``loom validate`` and ``loom render`` print.
    """
    limit = MAX_NAME_LENGTH.get(kind, MIN_MAX_NAME_LENGTH)
    why = []
    if not _NAME_RE.match(name):
        why.append("use lower-case letters, digits and '-', starting with a letter")
    if len(name) > limit:
        why.append(f"at most {limit} characters, so every object made from it fits in {LABEL_MAX_LENGTH}")
    if not why:
        return None
    return (
        f"name {name!r} cannot become Kubernetes object names ({'; '.join(why)}); "
        f"use {object_name(name, kind)!r}"
    )


def object_name(name: str, kind: str = "Worker") -> str:
    """The object name for a plain-Loom ``name``: unchanged when valid, else a deterministic valid one.

    Lower case, every other character than ``a-z0-9-`` becomes ``-`` (``entity_extractor`` →
    ``entity-extractor``), runs of ``-`` collapse, a name not starting with a letter gets ``loom-``
    in front; one too long for ``kind`` is cut and ends in 8 hex digits of the original's hash, so
    two long names never meet.
    """
    limit = MAX_NAME_LENGTH.get(kind, MIN_MAX_NAME_LENGTH)
    if _NAME_RE.match(name) and len(name) <= limit:
        return name
    out = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", name.lower())).strip("-")
    if not out[:1].isalpha():
        out = _PREFIX + out if out else _PREFIX.rstrip("-")
    if len(out) > limit:
        digest = hashlib.sha256(name.encode()).hexdigest()[:_HASH_LENGTH]
        out = f"{out[: limit - _HASH_LENGTH - 1].rstrip('-')}-{digest}"
    return out
