"""The run dir's state file: how ``loom status`` (another process) finds a running ``loom up``.

Written atomically (temp file + rename) whenever a process changes state, so a
reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"
DEFAULT_RUN_DIR = Path(".loom") / "run"
RUN_DIR_ENV = "LOOM_RUN_DIR"


def default_run_dir(env: Mapping[str, str] | None = None) -> Path:
    """The run dir a command uses when not told: ``LOOM_RUN_DIR``, else ``.loom/run`` here."""
    e = os.environ if env is None else env
    return Path(e.get(RUN_DIR_ENV) or DEFAULT_RUN_DIR)


@dataclass
class RunState:
    """What a running ``loom up`` publishes about itself."""

    pid: int
    nats_url: str
    nats_monitor_url: str | None
    embedded_nats: bool
    #: True when the embedded NATS requires the per-role credentials ``loom up`` generated.
    bus_auth: bool = False
    phase: str = "starting"  # starting | ready | stopping | stopped | failed
    local_llm_url: str | None = None
    manifests: list[str] = field(default_factory=list)
    processes: list[dict[str, Any]] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunState:
        """Parse a state file's content (unknown keys ignored)."""
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def write_state(run_dir: Path, state: RunState) -> None:
    """Replace the state file atomically."""
    state.updated_at = time.time()
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{STATE_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(state.as_dict(), indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, run_dir / STATE_FILE)


def read_state(run_dir: Path) -> RunState | None:
    """The state file's content, or None when there is none."""
    try:
        return RunState.from_dict(json.loads((run_dir / STATE_FILE).read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None


def pid_alive(pid: int | None) -> bool:
    """True when a process with this pid exists."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_state(run_dir: Path) -> RunState | None:
    """The state of a ``loom up`` that is still alive in this run dir, else None."""
    state = read_state(run_dir)
    if state is None or state.phase in ("stopped", "failed") or not pid_alive(state.pid):
        return None
    return state
