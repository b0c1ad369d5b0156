"""The local supervisor with real child processes: restarts, drain order, kill after grace."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from loom.local.supervisor import Backoff, ProcessSpec, Supervisor, SupervisorError

PY = sys.executable

# Appends its name to a file on SIGTERM, then exits 0; prints a line so logs can be checked.
TERM_RECORDER = """
import signal, sys, time
name, path = sys.argv[1], sys.argv[2]
def on_term(*_):
    with open(path, "a") as f:
        f.write(name + "\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print(f"{name} up", flush=True)
while True:
    time.sleep(0.05)
"""


def child(name: str, phase: int, code: str, *args: str, **kw: object) -> ProcessSpec:
    return ProcessSpec(name=name, role="test", argv=(PY, "-c", code, *args), phase=phase, **kw)  # type: ignore[arg-type]


async def wait_for(cond: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def test_backoff_grows_to_its_maximum() -> None:
    b = Backoff(initial=0.5, factor=2.0, maximum=3.0)
    assert [b.delay(n) for n in range(6)] == [0.0, 0.5, 1.0, 2.0, 3.0, 3.0]


async def test_a_child_that_dies_is_restarted_and_counted(tmp_path: Path) -> None:
    counter = tmp_path / "starts"
    code = f"open({str(counter)!r}, 'a').write('x'); import sys; sys.exit(3)"
    sup = Supervisor(
        [child("flaky", 0, code)],
        log_dir=tmp_path / "logs",
        backoff=Backoff(initial=0.05, factor=1.0, maximum=0.05),
        poll_interval=0.05,
    )
    starter = asyncio.create_task(sup.start())
    try:
        await wait_for(lambda: sup.status["flaky"].restarts >= 3)
        assert sup.status["flaky"].last_exit_code == 3
        assert counter.read_text().count("x") >= 3
        assert "exited with code 3; restarting" in sup.log_tail("flaky")
    finally:
        await sup.stop()
        starter.cancel()
        await asyncio.gather(starter, return_exceptions=True)
    assert sup.status["flaky"].state == "stopped"


async def test_stop_drains_in_reverse_start_order(tmp_path: Path) -> None:
    order = tmp_path / "order"
    specs = [
        child("infra", 0, TERM_RECORDER, "infra", str(order)),
        child("worker", 1, TERM_RECORDER, "worker", str(order)),
        child("schedule", 2, TERM_RECORDER, "schedule", str(order)),
    ]
    sup = Supervisor(specs, log_dir=tmp_path / "logs", poll_interval=0.05)
    await sup.start()
    assert sup.all_ready
    pids = [st.pid for st in sup.snapshot()]
    assert all(pids) and len(set(pids)) == 3
    await wait_for(lambda: all("up" in sup.log_tail(n) for n in ("infra", "worker", "schedule")))
    await sup.stop()
    assert order.read_text().split() == ["schedule", "worker", "infra"]
    assert all(st.state == "stopped" and st.restarts == 0 for st in sup.snapshot())


async def test_a_child_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    stubborn = (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('on', flush=True)\n"
        + ("while True: time.sleep(0.05)")
    )
    sup = Supervisor([child("stubborn", 0, stubborn)], log_dir=tmp_path / "logs", grace_seconds=0.3)
    await sup.start()
    await wait_for(lambda: "on" in sup.log_tail("stubborn"))
    proc = sup._procs["stubborn"]
    await sup.stop()
    assert proc.returncode == -9


async def test_a_child_that_never_gets_ready_fails_start_with_its_log(tmp_path: Path) -> None:
    code = "print('listening nowhere', flush=True)\nimport time\ntime.sleep(30)"
    spec = child("deaf", 0, code, ready_url="http://127.0.0.1:9/readyz", ready_timeout=0.8)
    sup = Supervisor([spec], log_dir=tmp_path / "logs", poll_interval=0.05, grace_seconds=1)
    try:
        with pytest.raises(SupervisorError, match=r"deaf not ready within 1s[\s\S]*listening nowhere"):
            await sup.start()
    finally:
        await sup.stop()


async def test_a_missing_program_is_a_start_error(tmp_path: Path) -> None:
    spec = ProcessSpec(name="ghost", role="test", argv=(str(tmp_path / "no-such-binary"),), phase=0)
    sup = Supervisor([spec], log_dir=tmp_path / "logs")
    try:
        with pytest.raises(SupervisorError, match="cannot start ghost"):
            await sup.start()
    finally:
        await sup.stop()


async def test_output_is_echoed_with_the_process_name(tmp_path: Path) -> None:
    import io

    out = io.StringIO()
    code = "print('hello from child', flush=True)\nimport time\ntime.sleep(30)"
    sup = Supervisor([child("talker", 0, code)], log_dir=tmp_path / "logs", echo=out)
    await sup.start()
    await wait_for(lambda: "hello from child" in out.getvalue())
    await sup.stop()
    assert any(
        line.startswith("talker") and line.endswith("| hello from child")
        for line in out.getvalue().splitlines()
    )
    assert "hello from child" in (tmp_path / "logs" / "talker.log").read_text()
