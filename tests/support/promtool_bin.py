"""Locate Prometheus's promtool, which checks and unit-tests the chart's alert rules.

``LOOM_PROMTOOL`` first, then the cache that ``hack/promtool/build.sh`` fills (``make test`` runs it
through ``hack/test-setup.sh``). Nothing is built here: a cold build takes minutes and belongs to
setup, not to a test with a timeout.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from tests.support.setup_outputs import NotSetUp, checked_output

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
    try:
        return checked_output(BUILD_SH, "promtool")
    except NotSetUp as exc:
        raise PromtoolUnavailable(f"promtool is not built (or set LOOM_PROMTOOL): {exc}") from exc
