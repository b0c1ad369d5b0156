"""Background runs: a processor worker's test through its real engine, and the cap on kept runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from loom.workshop.project import Project
from loom.workshop.runs import EmbeddedModel, Run, Runs, attempts

ROOT = Path(__file__).resolve().parents[3]


async def _finished(run: Run) -> Run:
    for _ in range(400):
        if run.state != "running":
            return run
        await asyncio.sleep(0.01)
    raise AssertionError(f"run {run.id} still running")


async def test_runs_finish_in_the_background_and_old_ones_are_forgotten() -> None:
    snap = Project(ROOT / "config" / "samples").load()
    extractor = snap.worker("doc-extractor").resource
    policy, _ = snap.policy()
    runs = Runs(EmbeddedModel("http://127.0.0.1:9/v1"), keep=3)  # the model is never used by a processor
    try:
        first = runs.test(extractor, policy, "local", {"text": "Due 2024-01-02."})
        assert first.state == "running"  # the request returns before the work is done
        done = await _finished(first)
        assert done.state == "done" and done.result.output.output["dates"] == ["2024-01-02"]
        last = first
        for i in range(3):
            last = await _finished(runs.test(extractor, policy, "local", {"text": f"Case {i}."}))
        with pytest.raises(KeyError):
            runs.get(first.id)
        assert runs.get(last.id) is last
    finally:
        await runs.close()


def test_each_reply_is_checked_as_the_engine_checks_it() -> None:
    schema = {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}}
    tries = attempts(["no json here", '{"a": "x"}', '{"a": 1}'], schema)
    assert [bool(t.problems) for t in tries] == [True, True, False]
    assert tries[1].problems == ["a: 'x' is not of type 'integer'"]
    assert tries[0].feedback is not None and tries[0].feedback.startswith("Your reply was rejected:")
    assert tries[2].feedback is None
