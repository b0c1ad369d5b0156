"""The one rule for bus permissions and tenant subjects (pure functions, no server)."""

from __future__ import annotations

import json

import pytest

from loom.bus import _stream_configs
from loom.bus_auth import LOOM_STREAMS, Identity, Role, new_credential, permissions, server_authorization
from loom.messages import stamp_tenant
from loom.subjects import (
    goal_filters,
    goal_subject,
    incoming_subject,
    result_subject,
    subject_matches,
    tenant_of_subject,
)


def test_the_default_tenant_keeps_the_original_subjects() -> None:
    assert incoming_subject() == "loom.tasks.incoming"
    assert goal_subject("p") == "loom.goals.p"
    assert result_subject("k") == "loom.results.k"


@pytest.mark.parametrize(
    "subject",
    [incoming_subject("acme"), goal_subject("p", "acme"), goal_subject(None, "acme")],
)
def test_the_tenant_is_read_back_from_its_submission_subject(subject: str) -> None:
    assert tenant_of_subject(subject) == "acme"


def test_subjects_without_a_tenant_mark_belong_to_the_default_tenant() -> None:
    assert tenant_of_subject("loom.tasks.incoming") == "default"
    assert tenant_of_subject("loom.goals.tenant") == "default"  # a pipeline called "tenant"
    assert tenant_of_subject("loom.results.tenant.acme.k") == "default"  # results submit nothing


def test_goal_consumers_see_every_tenants_goals_and_nothing_else() -> None:
    filters = goal_filters("p")
    assert any(subject_matches(f, goal_subject("p", "acme")) for f in filters)
    assert any(subject_matches(f, goal_subject("p")) for f in filters)
    assert not any(subject_matches(f, goal_subject("q", "acme")) for f in filters)


def test_stamp_tenant_rewrites_only_a_wrong_claim() -> None:
    body = b'{"worker_type":"w","tenant":"a","extra":1}'
    assert json.loads(stamp_tenant(body, "b")) == {"worker_type": "w", "tenant": "b", "extra": 1}
    assert stamp_tenant(body, "a") is body
    assert json.loads(stamp_tenant(b'{"worker_type":"w"}', "b"))["tenant"] == "b"


def _allowed(patterns: tuple[str, ...], subject: str) -> bool:
    return any(subject_matches(p, subject) for p in patterns)


def test_a_tenant_may_touch_only_its_own_subjects() -> None:
    p = permissions(Identity("bob", Role.TENANT, tenant="b"))
    assert _allowed(p.publish, incoming_subject("b"))
    assert _allowed(p.publish, goal_subject("pipe", "b"))
    assert _allowed(p.subscribe, result_subject("x", "b"))
    for subject in (incoming_subject("a"), incoming_subject(), goal_subject("pipe", "a"), "loom.tasks.w.t"):
        assert not _allowed(p.publish, subject), subject
    for subject in (result_subject("x", "a"), result_subject("x"), "loom.tasks.w.t", "_INBOX.x"):
        assert not _allowed(p.subscribe, subject), subject
    assert _allowed(p.subscribe, "_INBOX_bob.x")
    assert not _allowed(p.publish, "$JS.API.STREAM.DELETE.LOOM_TASKS")


def test_only_the_admin_deletes_or_purges() -> None:
    for role, extra in [
        (Role.ROUTER, {}),
        (Role.WORKER, {"worker_type": "w", "tiers": ("t",)}),
        (Role.PIPELINE, {"pipeline": "p"}),
        (Role.ORCHESTRATOR, {}),
        (Role.SCHEDULER, {}),
    ]:
        p = permissions(Identity(role.value, role, **extra))  # type: ignore[arg-type]
        assert _allowed(p.publish_deny, "$JS.API.STREAM.PURGE.LOOM_TASKS"), role
        assert _allowed(p.publish_deny, "$JS.API.STREAM.DELETE.LOOM_DEAD_LETTER"), role
    admin = permissions(Identity("admin", Role.ADMIN))
    assert admin.publish_deny == () and _allowed(admin.publish, "$JS.API.STREAM.PURGE.LOOM_TASKS")


def test_a_worker_pulls_only_its_own_consumers() -> None:
    p = permissions(Identity("w", Role.WORKER, worker_type="w", tiers=("t",)))
    assert _allowed(p.publish, "$JS.API.CONSUMER.MSG.NEXT.LOOM_TASKS.worker-w-t")
    assert not _allowed(p.publish, "$JS.API.CONSUMER.MSG.NEXT.LOOM_TASKS.worker-other-t")
    assert not _allowed(p.publish, "loom.tasks.other.t")


def test_the_streams_permitted_are_the_streams_declared() -> None:
    assert sorted(LOOM_STREAMS) == sorted(str(c.name) for c in _stream_configs())


def test_server_authorization_refuses_a_user_twice() -> None:
    one = new_credential(Identity("x", Role.ADMIN))
    text = server_authorization([one])
    assert text.startswith("authorization: ") and json.loads(text.split(":", 1)[1])["users"][0]["user"] == "x"
    with pytest.raises(ValueError, match="twice"):
        server_authorization([one, new_credential(Identity("x", Role.TENANT))])
