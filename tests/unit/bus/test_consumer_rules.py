"""The consumer rules both buses apply (the real one to the server's counts, the twin to its own)."""

from __future__ import annotations

from loom.bus.consumers import first_filters, uncovered


def test_subjects_no_consumer_covers_are_the_work_nobody_will_take() -> None:
    stored = {"loom.tasks.echo.local": 2, "loom.tasks.ghost.standard": 1, "loom.tasks.gone.local": 0}
    filters = {"worker-echo-local": ["loom.tasks.echo.local"], "worker-x": ["loom.tasks.x.*"]}
    assert uncovered(stored, filters) == {"loom.tasks.ghost.standard": 1}  # an empty subject is not work
    assert uncovered(stored, {**filters, "everything": []}) == {}  # no filter: the whole stream
    assert uncovered(stored, {"wild": ["loom.tasks.*.standard"]}) == {"loom.tasks.echo.local": 2}


def test_a_consumer_on_the_whole_stream_has_an_empty_first_filter() -> None:
    assert first_filters({"a": ["x.1", "x.2"], "b": []}) == {"a": "x.1", "b": ""}
