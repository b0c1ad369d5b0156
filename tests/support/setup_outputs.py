"""Where the test setup (``hack/test-setup.sh``) put a binary: ask its build script's ``--check``.

Every setup script prints its output path on its last line and, with ``--check``, builds nothing
and exits 1 when something is missing; the fixtures only ever locate, never build.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


class NotSetUp(RuntimeError):
    """A setup step has not run (or its output is stale)."""


def checked_output(script: Path, step: str) -> str:
    """The last line ``script --check`` prints; :class:`NotSetUp` naming ``step`` when it has nothing."""
    proc = subprocess.run(
        ["bash", str(script), "--check"], capture_output=True, text=True, timeout=60, check=False
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise NotSetUp(
            f"run `bash hack/test-setup.sh {step}` (part of `make test`): {proc.stderr.strip()[-500:]}"
        )
    return lines[-1]
