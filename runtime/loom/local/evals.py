"""EvalSuites in local mode: ``loom up`` runs each once, after every process is ready, the way the
operator's Job does on a cluster: ``loom eval`` through the router (``--nats-url``), as the
suite's tenant, with the Worker read from the same manifests.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from loom.api.common import GROUP_VERSION
from loom.api.loader import Resource

EVALS_DIR = "evals"


def eval_suites(resources: Sequence[Resource]) -> list[Resource]:
    return [r for r in resources if r.kind == "EvalSuite"]


def write_suites(suites: Sequence[Resource], run_dir: Path) -> list[Path]:
    """Each suite as its own EvalSuite manifest under ``<run dir>/evals`` (a manifest file may hold
    several documents; ``loom eval`` reads one)."""
    out = []
    directory = run_dir / EVALS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    for res in suites:
        doc = {
            "apiVersion": GROUP_VERSION,
            "kind": "EvalSuite",
            "metadata": {"name": res.name},
            "spec": res.spec.to_manifest_dict(),
        }
        path = directory / f"{res.name}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        out.append(path)
    return out


def eval_command(suite_file: Path, manifests: Sequence[str], *, nats_url: str, run_dir: Path) -> list[str]:
    """The ``loom eval`` run of one suite against the running system (results kept beside the suite)."""
    return [
        sys.executable,
        "-m",
        "loom.cli.main",
        "eval",
        str(suite_file),
        *manifests,
        "--nats-url",
        nats_url,
        "--run-dir",
        str(run_dir),
        "--store",
        str(suite_file.with_suffix(".runs.sqlite")),
    ]
