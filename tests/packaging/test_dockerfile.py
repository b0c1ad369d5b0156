"""The image definition, checked statically (no Docker engine on this machine), plus the wheel it installs.

The Dockerfile is parsed into stages and instructions; the wheel the builder stage
installs is built the same way (``pip wheel --no-deps .``) and inspected for the
``loom`` entry point the image's ENTRYPOINT runs.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]


def parse(text: str) -> Dockerfile:
    """Instructions with line continuations joined and comments dropped, grouped by FROM."""
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    assert not buf, "dangling line continuation"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.IGNORECASE)
            assert m, f"unparsable FROM: {args}"
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda v: global_args[v.group(1) or v.group(2)], m.group(1))
            stages.append(Stage(base=base, name=m.group(2)))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            name, _, default = args.partition("=")
            global_args[name.strip()] = default.strip()
        else:
            stages[-1].instructions.append((keyword, args.strip()))
    return Dockerfile(global_args, stages)


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse(DOCKERFILE.read_text())


def test_multi_stage_with_a_named_builder(dockerfile: Dockerfile) -> None:
    assert len(dockerfile.stages) >= 2
    assert dockerfile.stages[0].name == "builder"
    final = dockerfile.stages[-1]
    assert any("--from=builder" in c and "/opt/loom" in c for c in final.all("COPY"))


def test_base_images_are_pinned_python_311_slim(dockerfile: Dockerfile) -> None:
    for stage in dockerfile.stages:
        image, _, digest = stage.base.partition("@")
        repo, _, tag = image.partition(":")
        assert repo == "python", stage.base
        assert re.fullmatch(r"3\.11\.\d+-slim(-\w+)?", tag), (
            f"base not pinned to a 3.11 patch release: {stage.base}"
        )
        assert not digest or re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
    assert "pinning by digest" in DOCKERFILE.read_text().lower() or "by digest" in DOCKERFILE.read_text()


def test_final_stage_runs_as_non_root_loom(dockerfile: Dockerfile) -> None:
    final = dockerfile.stages[-1]
    users = final.all("USER")
    assert users, "final stage has no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid == "10001" and gid in ("", "10001")
    entrypoint = final.all("ENTRYPOINT")
    assert entrypoint and json.loads(entrypoint[-1]) == ["loom"], 'ENTRYPOINT must be the exec form ["loom"]'
    # The final stage installs nothing: no package manager runs and no compiler is pulled in.
    for run in final.all("RUN"):
        assert not re.search(r"apt-get\s+install|apk\s+add|pip\s+install|build-essential|gcc", run), run
    assert not final.all("ADD"), "ADD fetches or unpacks implicitly; use COPY"


def test_builder_installs_the_wheel_into_a_venv(dockerfile: Dockerfile) -> None:
    builder = dockerfile.stages[0]
    script = " ".join(builder.all("RUN"))
    assert "pip wheel" in script and "python -m venv /opt/loom" in script
    assert "/opt/loom/bin/pip install" in script
    copied = [c.split()[0] for c in builder.all("COPY")]
    assert "runtime/" in copied and "operator/" in copied


def test_build_context_holds_what_the_builder_copies(dockerfile: Dockerfile) -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "**" in ignore, ".dockerignore must exclude everything not listed (.venv, .git, caches)"
    for args in dockerfile.stages[0].all("COPY"):
        *sources, _dest = args.split()
        for src in sources:
            if src.startswith("--"):
                continue
            assert f"!{src}" in ignore, f"{src} is copied but excluded by .dockerignore"
            assert (REPO / src).exists(), f"{src} is copied into the image but missing from the repository"


def test_the_wheel_carries_the_loom_entrypoint(dockerfile: Dockerfile, tmp_path: Path) -> None:
    """What the builder stage installs: a wheel with the `loom` script and the operator commands."""
    # The build context as the builder stage sees it (its COPY lines), so nothing is built in the tree.
    context = tmp_path / "src"
    for args in dockerfile.stages[0].all("COPY"):
        *sources, _dest = args.split()
        for src in (s for s in sources if not s.startswith("--") and (REPO / s).exists()):
            if (REPO / src).is_dir():
                shutil.copytree(
                    REPO / src, context / src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
                )
            else:
                context.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / src, context / src)
    dist = tmp_path / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), str(context)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = dist.glob("loom_k8s-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        text = zf.read(entry_points).decode()
    assert re.search(r"^loom = loom\.cli\.main:main$", text, re.MULTILINE)
    assert "operator = loom_operator.cli.operator_cmd" in text
    assert "loom/cli/main.py" in names
    assert any(n.startswith("loom_operator/") for n in names)
