"""A directory swapped for a symlink to outside, back and forth, while another thread reads a file
below it: checking the path and then opening it sometimes lands outside; walking the path with
O_NOFOLLOW and directory file descriptors never does."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from loom.core.workspace import WorkspaceError, WorkspaceManager

READS = 20_000
SECRET = "outside the workspace"


def test_a_flipping_symlink_never_leaks_a_file_outside_the_workspace(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    (root / "d").mkdir(parents=True)
    (root / "d" / "file.txt").write_text("inside")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "file.txt").write_text(SECRET)
    os.symlink(tmp_path / "out", root / "d-link")
    ws = WorkspaceManager(root)
    stop = threading.Event()
    real, link, aside = root / "d", root / "d-link", root / "d-aside"

    def flip() -> None:
        while not stop.is_set():
            os.rename(real, aside)  # the real directory steps aside ...
            os.rename(link, real)  # ... and a symlink to outside takes its name
            os.rename(real, link)
            os.rename(aside, real)

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    leaked = inside_reads = refused = 0
    try:
        for _ in range(READS):
            try:
                text = ws.read_text("d/file.txt")
            except (WorkspaceError, OSError):
                refused += 1
                continue
            if text == SECRET:
                leaked += 1
            else:
                inside_reads += 1
    finally:
        stop.set()
        flipper.join(10)
    assert leaked == 0, f"{leaked} of {READS} reads returned the file outside the workspace"
    assert inside_reads > 0 and refused > 0, (inside_reads, refused)  # both states of d were met
