"""The object-name rule: which names become valid Kubernetes objects, and the mapping of plain-Loom names."""

from __future__ import annotations

import re

import pytest

from loom.api.names import MAX_NAME_LENGTH, NAME_PATTERN, name_problem, object_name

DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("entity_extractor", "entity-extractor"),
        ("Doc_Classifier", "doc-classifier"),
        ("summarizer", "summarizer"),
        ("a__b", "a-b"),
        ("_lead_and_trail_", "lead-and-trail"),
        ("3d_model", "loom-3d-model"),
        ("___", "loom"),
    ],
)
def test_plain_names_map_to_valid_object_names(name: str, expected: str) -> None:
    assert object_name(name) == expected
    assert name_problem("Worker", expected) is None


def test_long_names_are_cut_and_stay_distinct() -> None:
    a, b = "x" * 60 + "_a", "x" * 60 + "_b"
    for kind, limit in MAX_NAME_LENGTH.items():
        na, nb = object_name(a, kind), object_name(b, kind)
        assert na != nb
        assert len(na) <= limit and DNS_1035_LABEL.match(na)
        assert object_name(a, kind) == na  # deterministic
    assert len(object_name("y" * MAX_NAME_LENGTH["Worker"])) == MAX_NAME_LENGTH["Worker"]


def test_limits_leave_room_for_the_longest_child_name() -> None:
    # Worker: "<name>-<tier>" with a 20-character tier, as a label value (KEDA) must fit in 63
    assert MAX_NAME_LENGTH["Worker"] == 63 - 1 - 20
    assert MAX_NAME_LENGTH["Schedule"] == 63 - len("-scheduler")
    assert MAX_NAME_LENGTH["Pipeline"] == 63 - len("-pipeline")
    assert DNS_1035_LABEL.pattern == NAME_PATTERN


def test_problem_says_why_and_what_to_use() -> None:
    problem = name_problem("Worker", "entity_extractor")
    assert problem is not None
    assert "'entity_extractor'" in problem and "use 'entity-extractor'" in problem
    long = "w" * 43
    problem = name_problem("Worker", long)
    assert problem is not None and "at most 42 characters" in problem
    assert name_problem("Pipeline", long) is None
