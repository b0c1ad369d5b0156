"""Whether an object that already exists under a child's name is the operator's to write (pure).

Children are written with a forced server-side apply, which takes over any object of the
same name: a Worker named after another application's ``<name>-config`` ConfigMap or
``<name>-metrics`` Service would overwrite it and, through the ownerReference it adds,
have it garbage-collected with the Worker. So before applying, every existing object of a
child's name must belong to the resource being reconciled:

- a controller ownerReference to the resource itself (its uid), or
- no controller ownerReference and the labels the operator renders for this resource
  (``app.kubernetes.io/managed-by=loom-operator`` and ``loom.dev/<kind>=<name>``), as
  ``loom render | kubectl apply`` leaves them, or
- those labels and a controller ownerReference to an earlier resource of the same kind
  and name (deleted and re-created; its children are about to be garbage-collected).

Anything else is refused: the resource goes Stalled and the object is left untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from loom.api.common import API_GROUP
from loom_operator.render.common import KIND_LABELS, MANAGED_BY, MANAGED_BY_LABEL, Owner


def _controller(meta: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for ref in meta.get("ownerReferences") or ():
        if ref.get("controller"):
            return dict(ref)
    return None


def adoption_problem(existing: Mapping[str, Any], owner: Owner) -> str | None:
    """Why ``existing`` (named like one of ``owner``'s children) must not be applied over, or None."""
    meta = existing.get("metadata") or {}
    what = f"{existing.get('kind', 'object')} {meta.get('name')!r}"
    controller = _controller(meta)
    if controller is not None and owner.uid is not None and controller.get("uid") == owner.uid:
        return None
    labels = meta.get("labels") or {}
    labelled = (
        labels.get(MANAGED_BY_LABEL) == MANAGED_BY and labels.get(KIND_LABELS[owner.kind]) == owner.name
    )
    if controller is None:
        if labelled:
            return None
        return (
            f"{what} already exists and was not created by the Loom operator for {owner.kind} "
            f"{owner.name!r} (no ownerReference to it, no labels {MANAGED_BY_LABEL}={MANAGED_BY} and "
            f"{KIND_LABELS[owner.kind]}={owner.name}); it is left untouched: rename the {owner.kind} "
            f"or remove that {existing.get('kind', 'object')}"
        )
    group = str(controller.get("apiVersion", "")).split("/")[0]
    earlier = (
        group == API_GROUP and controller.get("kind") == owner.kind and controller.get("name") == owner.name
    )
    if earlier and labelled:
        return None
    return (
        f"{what} already exists and belongs to {controller.get('kind')} {controller.get('name')!r}, "
        f"not to {owner.kind} {owner.name!r}; it is left untouched: rename the {owner.kind} "
        f"or remove that {existing.get('kind', 'object')}"
    )
