"""Find (or build) Prometheus's promtool, which checks and unit-tests the chart's alert rules.

Order: ``LOOM_PROMTOOL``, then ``PATH``, then the cache ``$LOOM_CACHE_DIR/promtool/<version>``
(default ``~/.cache/loom``), built there from the Go module proxy when ``go`` is available
(about ten minutes on two cores, once). ``LOOM_BUILD_PROMTOOL=0`` disables the build.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

#: github.com/prometheus/prometheus module version (Prometheus 3.x is published as v0.3xx).
PROMETHEUS_MODULE_VERSION = "v0.315.0"
MODULE = "github.com/prometheus/prometheus"


class PromtoolUnavailable(RuntimeError):
    """promtool is not installed and could not be built."""


def cache_path() -> Path:
    root = Path(os.environ.get("LOOM_CACHE_DIR", Path.home() / ".cache" / "loom"))
    return root / "promtool" / PROMETHEUS_MODULE_VERSION / "promtool"


def build(target: Path) -> Path:
    """Build cmd/promtool with the machine's Go from a throwaway module (its replace directives stay out)."""
    go = shutil.which("go")
    if go is None:
        raise PromtoolUnavailable("promtool is not installed and Go is not available to build it")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="loom-promtool-") as work:
        (Path(work) / "go.mod").write_text("module promtoolbuild\n\ngo 1.24\n")
        (Path(work) / "tools.go").write_text(
            f'//go:build tools\n\npackage tools\n\nimport _ "{MODULE}/cmd/promtool"\n'
        )
        env = {**os.environ, "GOFLAGS": "-buildvcs=false"}
        for argv in (
            [go, "get", f"{MODULE}/cmd/promtool@{PROMETHEUS_MODULE_VERSION}"],
            [go, "build", "-o", str(target), f"{MODULE}/cmd/promtool"],
        ):
            proc = subprocess.run(
                argv, cwd=work, env=env, capture_output=True, text=True, timeout=3600, check=False
            )
            if proc.returncode != 0:
                raise PromtoolUnavailable(f"{' '.join(argv)} failed: {proc.stderr[-3000:]}")
    return target


@functools.cache
def promtool() -> str:
    """Path of a promtool binary."""
    explicit = os.environ.get("LOOM_PROMTOOL")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise PromtoolUnavailable(f"LOOM_PROMTOOL={explicit} is not executable")
        return explicit
    on_path = shutil.which("promtool")
    if on_path:
        return on_path
    cached = cache_path()
    if os.access(cached, os.X_OK):
        return str(cached)
    if os.environ.get("LOOM_BUILD_PROMTOOL", "1") == "0":
        raise PromtoolUnavailable("promtool not found and LOOM_BUILD_PROMTOOL=0")
    return str(build(cached))
