"""The one rule for ids that become subject tokens, and the bus's last check before publishing."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from loom.messages import GoalMessage, TaskMessage, describe_validation_error
from loom.subjects import (
    MAX_SUBJECT,
    MAX_TOKEN,
    InvalidSubject,
    check_publish_subject,
    result_subject,
    subject_matches,
    task_id_problem,
    token_problem,
)


@pytest.mark.parametrize("value", ["a", "order-42", "A_b-9", "x" * MAX_TOKEN])
def test_valid_tokens(value: str) -> None:
    assert token_problem(value, "id") is None


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("", "must not be empty"),
        ("order.42", "'.'"),
        ("a b", "' '"),
        ("a*", "'*'"),
        ("a>", "'>'"),
        ("é", "'é'"),
        ("x" * 5000, "5000 characters long; at most 128"),
        (42, "must be a string"),
    ],
)
def test_invalid_tokens_say_why(value: object, says: str) -> None:
    problem = token_problem(value, "task_id")
    assert problem is not None and says in problem and problem.startswith("task_id")


def test_a_dotted_task_id_is_allowed_only_under_a_parent() -> None:
    assert task_id_problem("goal1.stage.1", "goal1") is None
    problem = task_id_problem("order.42", None)
    assert problem is not None and "loom.results.<task_id>" in problem
    assert task_id_problem("goal1..1", "goal1") is not None
    assert task_id_problem("g." + "x" * 300, "g") is not None
    assert task_id_problem("ok", "bad parent") is not None


def test_messages_refuse_ids_that_cannot_be_subjects() -> None:
    with pytest.raises(ValidationError) as info:
        TaskMessage(task_id="x" * 5000, worker_type="echo")
    line = describe_validation_error(info.value)
    assert "\n" not in line and "task_id is 5000 characters long" in line
    for bad in ({"worker_type": "a.b"}, {"worker_type": "echo", "model_tier": "t*"}):
        with pytest.raises(ValidationError):
            TaskMessage(**bad)  # type: ignore[arg-type]
    for bad_goal in ({"goal_id": "g 1"}, {"pipeline": "p>"}, {"goal_id": ""}):
        with pytest.raises(ValidationError):
            GoalMessage(**bad_goal)  # type: ignore[arg-type]
    # the pipeline's own stage ids still parse
    TaskMessage(task_id="g1.extract.2", parent_task_id="g1", worker_type="echo")


@pytest.mark.parametrize(
    "subject",
    ["", "a..b", ".a", "a.", "a b", "a.*", "a.>", "a\tb", "a\r\nb", "x" * (MAX_SUBJECT + 1)],
)
def test_publish_subjects_refused(subject: str) -> None:
    with pytest.raises(InvalidSubject):
        check_publish_subject(subject)


def test_publish_subject_accepted() -> None:
    assert check_publish_subject("loom.results.abc") == "loom.results.abc"
    with pytest.raises(InvalidSubject, match="result id"):
        result_subject("order.42")


@pytest.mark.parametrize(
    ("pattern", "subject", "matches"),
    [
        ("loom.tasks.echo.local", "loom.tasks.echo.local", True),
        ("loom.tasks.*.local", "loom.tasks.echo.local", True),
        ("loom.tasks.>", "loom.tasks.echo.local", True),
        (">", "loom.tasks.echo.local", True),
        ("loom.tasks.echo", "loom.tasks.echo.local", False),
        ("loom.tasks.echo.local.x", "loom.tasks.echo.local", False),
        ("loom.tasks.*.standard", "loom.tasks.echo.local", False),
        ("loom.tasks.echo.local.>", "loom.tasks.echo.local", False),
    ],
)
def test_subject_matches(pattern: str, subject: str, matches: bool) -> None:
    assert subject_matches(pattern, subject) is matches
