"""`loom up` and `loom status` refuse clearly, before starting anything, when they cannot run."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from loom.cli.main import main
from loom.local.state import RunState, write_state

SAMPLES = Path(__file__).resolve().parents[3] / "config" / "samples"


def test_invalid_manifests_are_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: loom.dev/v1alpha1\nkind: Worker\nmetadata: {name: w}\nspec: {workerKind: processor}\n"
    )
    assert main(["up", str(bad), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "invalid manifests" in err and "processor workers need processingBackend" in err
    assert main(["up", str(tmp_path / "nope"), "--run-dir", str(tmp_path / "run")]) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_a_taken_nats_port_is_named_with_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code = main(["up", str(SAMPLES), "--run-dir", str(tmp_path / "run"), "--nats-port", str(port)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"port {port} is in use" in err and "--nats-url" in err


def test_a_missing_local_model_names_the_install_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOOM_LOCAL_MODEL", str(tmp_path / "missing.gguf"))
    code = main(
        [
            "up",
            str(SAMPLES),
            "--run-dir",
            str(tmp_path / "run"),
            "--nats-port",
            "0",
            "--nats-monitor-port",
            "0",
        ]
    )
    assert code == 2
    assert "LOOM_LOCAL_MODEL" in capsys.readouterr().err


def test_a_second_loom_up_in_the_same_run_dir_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    write_state(
        run,
        RunState(
            pid=os.getpid(),
            nats_url="nats://127.0.0.1:1",
            nats_monitor_url=None,
            embedded_nats=True,
            phase="ready",
        ),
    )
    assert main(["up", str(SAMPLES), "--run-dir", str(run)]) == 1
    assert f"already running (pid {os.getpid()})" in capsys.readouterr().err


def test_status_without_a_running_system(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--run-dir", str(tmp_path)]) == 1
    assert "no `loom up` state" in capsys.readouterr().err
    write_state(
        tmp_path,
        RunState(
            pid=2**22 + 12345,
            nats_url="nats://127.0.0.1:1",
            nats_monitor_url=None,
            embedded_nats=True,
            phase="ready",
        ),
    )
    assert main(["status", "--run-dir", str(tmp_path), "--wait-ready", "1"]) == 1
    assert "loom up dead" in capsys.readouterr().err
    assert main(["status", "--run-dir", str(tmp_path), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["up"]["phase"] == "dead" and doc["processes"] == []
