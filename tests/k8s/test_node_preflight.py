"""The node tier's preflight: a machine that cannot run the real node fails with the reason."""

from __future__ import annotations

import subprocess

from tests.k8s.node import PREFLIGHT_SCRIPT


def _preflight_as(uid: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            "bash",
            str(PREFLIGHT_SCRIPT),
            "--tools",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_preflight_fails_for_a_user_who_is_not_root_and_says_so() -> None:
    result = _preflight_as(65534)
    assert result.returncode == 1
    assert "cannot run the real node" in result.stderr
    assert "not root (uid 65534)" in result.stderr


def test_preflight_passes_on_this_machine() -> None:
    """The machine the suite runs on has what the node needs (root, cgroup v1, overlay, tools)."""
    result = subprocess.run(
        ["bash", str(PREFLIGHT_SCRIPT), "--tools"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
