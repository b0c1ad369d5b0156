"""``loom render``: manifests in, the operator's objects out (file per resource, or one stream)."""

from __future__ import annotations

from pathlib import Path

import yaml

from loom_operator.cli import render_cmd

SAMPLES = Path(__file__).resolve().parents[3] / "config" / "samples"


def run(*argv: str) -> int:
    import argparse

    parser = argparse.ArgumentParser()
    render_cmd.add_arguments(parser)
    return render_cmd.run(parser.parse_args(list(argv)))


def test_render_directory_writes_one_file_per_resource(tmp_path: Path) -> None:
    assert run(str(SAMPLES), "-o", str(tmp_path / "out"), "--image", "example.org/loom:1") == 0
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert any(f.startswith("worker-") for f in files) and any(f.startswith("routerpolicy-") for f in files)
    for f in (tmp_path / "out").iterdir():
        for obj in yaml.safe_load_all(f.read_text()):
            assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "loom-operator"
            if obj["kind"] == "Deployment":
                assert obj["spec"]["template"]["spec"]["containers"][0]["image"] == "example.org/loom:1"


def test_render_single_file_and_keda(tmp_path: Path) -> None:
    out = tmp_path / "all.yaml"
    assert run(str(SAMPLES), "-o", str(out), "--keda") == 0
    kinds = {o["kind"] for o in yaml.safe_load_all(out.read_text())}
    assert {"ConfigMap", "Deployment", "Service"} <= kinds


def test_invalid_manifest_is_reported(tmp_path: Path, capsys: object) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: loom.dev/v1alpha1\nkind: Worker\nmetadata: {name: w}\nspec: {workerKind: processor}\n"
    )
    assert run(str(bad), "-o", str(tmp_path / "o.yaml")) == 1
    assert not (tmp_path / "o.yaml").exists()
