"""Locate Prometheus's promtool, which checks and unit-tests the chart's alert rules.

``LOOM_PROMTOOL`` first, then the cache that ``hack/promtool/build.sh`` fills (``make test`` runs it
through ``hack/test-setup.sh``). Nothing is built here: a cold build takes minutes and belongs to
setup, not to a test with a timeout.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_SH = REPO / "hack" / "promtool" / "build.sh"


class PromtoolUnavailable(RuntimeError):
    """promtool has not been built by the test setup."""


@functools.cache
def promtool() -> str:
    """Path of the promtool binary."""
    explicit = os.environ.get("LOOM_PROMTOOL")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise PromtoolUnavailable(f"LOOM_PROMTOOL={explicit} is not executable")
        return explicit
    proc = subprocess.run(
        ["bash", str(BUILD_SH), "--check"], capture_output=True, text=True, timeout=60, check=False
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise PromtoolUnavailable(
            "promtool is not built: run `bash hack/test-setup.sh promtool` (part of `make test`) "
            f"or set LOOM_PROMTOOL ({proc.stderr.strip()})"
        )
    return lines[-1]
