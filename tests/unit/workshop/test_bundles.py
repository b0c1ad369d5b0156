"""App bundles: each unsafe archive refused with its reason before anything is written, manifests
validated with the loader ``loom up`` uses, installs replacing the app in one step with every archive
kept, restore and remove."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import pytest

from loom.workshop.bundles import (
    ARCHIVES_DIR,
    MAX_ARCHIVE_BYTES,
    Apps,
    BundleError,
    app_name,
    clashes,
    entry_problem,
    read_bundle,
    validate,
)
from loom.workshop.project import Project
from loom.workshop.routes_apps import live_command

WORKER = """\
# a comment the install keeps
apiVersion: loom.dev/v1alpha1
kind: Worker
metadata:
  name: {name}
spec:
  workerKind: processor
  processingBackend: loom.contrib.duckdb.DuckDBQueryBackend
  backendConfig: {{db_path: /tmp/x.duckdb, table_name: t}}
"""
PLAIN_PIPELINE = """\
name: {name}
pipeline_stages:
  - name: one
    worker_type: {worker}
"""


def bundle(files: dict[str, str | bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in files.items():
            z.writestr(name, text)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, target)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("/etc/cron.d/x.yaml", "an absolute path"),
        ("C:/loom/x.yaml", "an absolute path"),
        ("app/../../outside.yaml", "'..' leaves the app folder"),
        ("..", "'..' leaves the app folder"),
        ("app\\x.yaml", "a backslash"),
        (".git/config.yaml", "a hidden file or folder"),
        ("backend.py", "not a manifest (only .yaml, .yml files)"),
    ],
)
def test_unsafe_entries_are_named(name: str, reason: str) -> None:
    problem = entry_problem(zipfile.ZipInfo(name))
    assert problem is not None and problem.startswith(name) and reason in problem


def test_safe_entries_and_folders_pass() -> None:
    assert entry_problem(zipfile.ZipInfo("app/worker.yaml")) is None
    assert entry_problem(zipfile.ZipInfo("app/sub/")) is None


def test_every_problem_is_reported_at_once() -> None:
    data = bundle({"ok.yaml": "a: 1", "../escape.yaml": "a: 1", "tool.sh": "rm -rf /"},
                  {"link.yaml": "/etc/passwd"})
    with pytest.raises(BundleError) as err:
        read_bundle(data)
    assert err.value.problems == [
        "../escape.yaml: '..' leaves the app folder",
        "tool.sh: not a manifest (only .yaml, .yml files)",
        "link.yaml: a symbolic link (links are refused)",
    ]


def test_too_many_files_or_bytes() -> None:
    data = bundle({f"w{i}.yaml": "x" * 100 for i in range(3)})
    with pytest.raises(BundleError, match="3 files; a bundle holds at most 2"):
        read_bundle(data, max_files=2)
    with pytest.raises(BundleError, match="300 bytes uncompressed; a bundle holds at most 299"):
        read_bundle(data, max_bytes=299)
    assert len(read_bundle(data, max_files=3, max_bytes=300)) == 3


def test_not_a_zip_empty_and_not_utf8() -> None:
    with pytest.raises(BundleError, match=f"the archive is larger than {MAX_ARCHIVE_BYTES} bytes"):
        read_bundle(b"PK" + bytes(MAX_ARCHIVE_BYTES))
    with pytest.raises(BundleError, match="not a ZIP archive"):
        read_bundle(b"PK but not really")
    with pytest.raises(BundleError, match="no manifests in the archive"):
        read_bundle(bundle({"folder/": ""}))
    with pytest.raises(BundleError, match=r"bad\.yaml: not UTF-8 text"):
        read_bundle(bundle({"bad.yaml": b"name: \xff\xfe"}))


def test_a_zipped_folder_loses_its_top_folder() -> None:
    files = read_bundle(bundle({"town/workers/a.yaml": "a", "town/b.yaml": "b"}))
    assert [f.path for f in files] == ["b.yaml", "workers/a.yaml"]
    flat = read_bundle(bundle({"a.yaml": "a", "sub/b.yaml": "b"}))
    assert [f.path for f in flat] == ["a.yaml", "sub/b.yaml"]


def test_app_names() -> None:
    assert app_name("uploads/Town.zip".lower()) == "town"
    assert app_name("whatever.zip", "news-2") == "news-2"
    for bad in ("../x", "-x", "X", ".hidden", "a" * 64):
        with pytest.raises(BundleError, match="use lower-case letters"):
            app_name("b.zip", bad)


def test_validation_uses_the_loader_of_loom_up() -> None:
    pipeline = PLAIN_PIPELINE.format(name="p1", worker="w1")
    files = read_bundle(bundle({"w.yaml": WORKER.format(name="w1"), "p.yaml": pipeline}))
    resources = validate(files, "town")
    assert [(r.kind, r.name) for r in resources] == [("Pipeline", "p1"), ("Worker", "w1")]
    assert resources[1].source == "apps/town/w.yaml"
    robot = WORKER.format(name="w1").replace("processor", "robot")
    broken = read_bundle(bundle({"w.yaml": robot, "ci.yaml": "jobs: {}"}))
    with pytest.raises(BundleError) as err:
        validate(broken, "town")
    assert err.value.problems[0].startswith("apps/town/ci.yaml: not a Loom manifest")
    assert any(p.startswith("apps/town/w.yaml") and "workerKind" in p for p in err.value.problems[1:])


def test_clashes_with_the_rest_of_the_project() -> None:
    app = validate(read_bundle(bundle({"w.yaml": WORKER.format(name="w1")})), "a")
    same = validate(read_bundle(bundle({"w.yaml": WORKER.format(name="w1")})), "b")
    other = validate(read_bundle(bundle({"w.yaml": WORKER.format(name="w2")})), "c")
    assert clashes(app, same) == ["apps/a/w.yaml: Worker 'w1' is already defined by apps/b/w.yaml"]
    assert clashes(app, other) == []


def test_install_replace_restore_remove(tmp_path: Path) -> None:
    root = tmp_path / "project"
    root.mkdir()
    (root / "worker-base.yaml").write_text(WORKER.format(name="base"))
    apps = Apps(root)
    v1 = apps.install("town", bundle({"town/w.yaml": WORKER.format(name="town-w")}))
    assert (v1.installed, v1.workers, v1.problems, v1.files) == (True, ["town-w"], [], ["w.yaml"])
    assert (root / "apps/town/w.yaml").read_text().startswith("# a comment the install keeps")
    v2 = apps.install("town", bundle({"w.yaml": WORKER.format(name="town-w2"),
                                      "p.yaml": PLAIN_PIPELINE.format(name="town-p", worker="town-w2")}))
    assert (v2.workers, v2.pipelines, len(v2.archives)) == (["town-w2"], ["town-p"], 2)
    assert sorted(p.name for p in (root / "apps/town").iterdir()) == ["p.yaml", "w.yaml"]
    assert not list((root / ".loom/workshop/staging").iterdir())

    back = apps.restore("town", v2.archives[0].id)
    assert (back.workers, back.pipelines, len(back.archives)) == (["town-w"], [], 3)
    apps.remove("town")
    assert not (root / "apps/town").exists()
    [removed] = apps.list()
    assert (removed.name, removed.installed, len(removed.archives)) == ("town", False, 3)
    assert apps.restore("town", removed.archives[-1].id).workers == ["town-w"]
    with pytest.raises(BundleError, match="no archive 'x' of app 'town'"):
        apps.restore("town", "x")
    with pytest.raises(BundleError, match="app 'nope' is not installed"):
        apps.remove("nope")


def test_a_refused_bundle_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "project"
    root.mkdir()
    (root / "worker-base.yaml").write_text(WORKER.format(name="base"))
    apps = Apps(root)
    with pytest.raises(BundleError, match=r"Worker 'base' is already defined by worker-base\.yaml"):
        apps.install("dup", bundle({"w.yaml": WORKER.format(name="base")}))
    with pytest.raises(BundleError, match="leaves the app folder"):
        apps.install("evil", bundle({"../../w.yaml": WORKER.format(name="x")}))
    assert sorted(p.name for p in root.iterdir()) == ["worker-base.yaml"]
    assert not (root / ARCHIVES_DIR).exists()


def test_a_refused_replacement_keeps_the_installed_version(tmp_path: Path) -> None:
    apps = Apps(tmp_path)
    apps.install("town", bundle({"w.yaml": WORKER.format(name="town-w")}))
    with pytest.raises(BundleError):
        apps.install("town", bundle({"w.yaml": "kind: Worker\nspec: {workerKind: robot}"}))
    assert "town-w" in (tmp_path / "apps/town/w.yaml").read_text()
    assert len(apps.archives("town")) == 1


def test_live_command_names_the_app_folder_when_the_workshop_paths_do_not(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    assert live_command(Project(tmp_path), "town") == f"loom up {tmp_path}"
    given = Project(tmp_path, [tmp_path / "config"])
    assert live_command(given, "town") == f"loom up {tmp_path / 'config'} {tmp_path / 'apps' / 'town'}"
