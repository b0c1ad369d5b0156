"""Run the local system as child processes: start in phases, restart what dies, drain on stop.

Children run in their own sessions, so a Ctrl-C in the terminal reaches only
``loom up``, which then stops them in reverse start order (schedulers first, NATS
last) with SIGTERM, giving each phase ``grace_seconds`` to drain before SIGKILL.
A child that exits on its own is restarted after an exponential backoff that
resets once it has run steadily; every restart is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Literal

import httpx

log = logging.getLogger("loom.local")

State = Literal["starting", "running", "ready", "backoff", "stopping", "stopped"]


@dataclass(frozen=True)
class ProcessSpec:
    """How to run one child process and how to tell it is ready."""

    name: str
    role: str
    argv: tuple[str, ...]
    phase: int
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    ready_url: str | None = None
    metrics_url: str | None = None
    ready_timeout: float = 60.0
    tier: str | None = None


@dataclass(frozen=True)
class Backoff:
    """Restart delays: ``initial * factor**(n-1)`` up to ``maximum``; a steady run resets ``n``."""

    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 30.0
    reset_after: float = 30.0

    def delay(self, consecutive_failures: int) -> float:
        """Delay before the ``consecutive_failures``-th restart in a row (1-based)."""
        if consecutive_failures <= 0:
            return 0.0
        return float(min(self.maximum, self.initial * self.factor ** (consecutive_failures - 1)))


@dataclass
class ProcessStatus:
    """What the supervisor knows of one child right now."""

    name: str
    role: str
    state: State = "starting"
    pid: int | None = None
    restarts: int = 0
    last_exit_code: int | None = None
    started_at: float | None = None
    metrics_url: str | None = None
    tier: str | None = None

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form for the run dir state file."""
        return asdict(self)


class SupervisorError(RuntimeError):
    """A child could not be started or never became ready."""


class Supervisor:
    """Runs ProcessSpecs as children; see the module docstring."""

    def __init__(
        self,
        specs: list[ProcessSpec],
        *,
        log_dir: Path,
        echo: IO[str] | None = None,
        backoff: Backoff | None = None,
        grace_seconds: float = 30.0,
        on_change: Callable[[], None] | None = None,
        poll_interval: float = 0.5,
        health_interval: float = 5.0,
    ):
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate process names: {names}")
        self.specs = sorted(specs, key=lambda s: s.phase)
        self.log_dir = log_dir
        self.echo = echo
        self.backoff = backoff or Backoff()
        self.grace_seconds = grace_seconds
        self.on_change = on_change or (lambda: None)
        self.poll_interval = poll_interval
        self.health_interval = health_interval
        self.status: dict[str, ProcessStatus] = {
            s.name: ProcessStatus(name=s.name, role=s.role, metrics_url=s.metrics_url, tier=s.tier)
            for s in self.specs
        }
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._http: httpx.AsyncClient | None = None
        self._failures: dict[str, str] = {}

    @property
    def stopping(self) -> bool:
        """True once stop() was called."""
        return self._stopping.is_set()

    def log_path(self, name: str) -> Path:
        """The log file of a child."""
        return self.log_dir / f"{name}.log"

    async def start(self) -> None:
        """Start phase by phase; each phase must be ready before the next starts."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._http = httpx.AsyncClient(timeout=2.0)
        for phase in sorted({s.phase for s in self.specs}):
            group = [s for s in self.specs if s.phase == phase]
            self._tasks += [
                asyncio.create_task(self._keep_running(spec), name=f"supervise-{spec.name}") for spec in group
            ]
            self._tasks += [
                asyncio.create_task(self._watch_ready(spec), name=f"ready-{spec.name}") for spec in group
            ]
            await asyncio.gather(*(self._wait_ready(spec) for spec in group))
            if self.stopping:
                return

    @property
    def all_ready(self) -> bool:
        """Every child is up and answering its readiness check."""
        return all(st.state == "ready" for st in self.status.values())

    async def _wait_ready(self, spec: ProcessSpec) -> None:
        deadline = time.monotonic() + spec.ready_timeout
        while not self.stopping:
            if self.status[spec.name].state == "ready":
                return
            if spec.name in self._failures:
                raise SupervisorError(self._failures[spec.name])
            if time.monotonic() > deadline:
                raise SupervisorError(
                    f"{spec.name} not ready within {spec.ready_timeout:.0f}s "
                    f"(restarts: {self.status[spec.name].restarts}); "
                    f"last log lines:\n{self.log_tail(spec.name)}"
                )
            await asyncio.sleep(self.poll_interval / 5)

    def log_tail(self, name: str, lines: int = 20) -> str:
        """The last lines of a child's log (for error messages)."""
        path = self.log_path(name)
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    async def _probe(self, url: str) -> bool:
        assert self._http is not None
        try:
            resp = await self._http.get(url)
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

    async def _watch_ready(self, spec: ProcessSpec) -> None:
        """Keep each child's state current: running/ready by its readiness URL.

        Polls quickly until ready, then every ``health_interval`` seconds.
        """
        st = self.status[spec.name]
        while not self.stopping:
            if st.state in ("running", "ready") and st.pid is not None:
                ok = True if spec.ready_url is None else await self._probe(spec.ready_url)
                new: State = "ready" if ok else "running"
                if new != st.state and st.state in ("running", "ready") and not self.stopping:
                    st.state = new
                    self.on_change()
            await asyncio.sleep(self.health_interval if st.state == "ready" else self.poll_interval)

    async def _keep_running(self, spec: ProcessSpec) -> None:
        st = self.status[spec.name]
        failures = 0
        # Unbuffered: a crash leaves every line it printed in the log. Opening a local file once per
        # process lifetime does not block the loop in any way that matters.
        logfile = open(self.log_path(spec.name), "ab", buffering=0)  # noqa: SIM115, ASYNC230
        try:
            while not self.stopping:
                started = time.monotonic()
                try:
                    proc = await asyncio.create_subprocess_exec(
                        *spec.argv,
                        env={**os.environ, **spec.env},
                        cwd=spec.cwd,
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=asyncio.subprocess.PIPE,
                        stderr=asyncio.subprocess.STDOUT,
                        start_new_session=True,
                    )
                except OSError as exc:
                    self._failures[spec.name] = f"cannot start {spec.name} ({spec.argv[0]}): {exc}"
                    return
                self._procs[spec.name] = proc
                st.pid, st.state, st.started_at = proc.pid, "running", time.time()
                self.on_change()
                assert proc.stdout is not None
                await self._pump(spec.name, proc.stdout, logfile)
                code = await proc.wait()
                st.last_exit_code = code
                st.pid = None
                if self.stopping:
                    break
                failures = 1 if time.monotonic() - started >= self.backoff.reset_after else failures + 1
                st.restarts += 1
                st.state = "backoff"
                self.on_change()
                delay = self.backoff.delay(failures)
                log.warning(
                    "%s exited with code %s; restart %d in %.1fs", spec.name, code, st.restarts, delay
                )
                self._line(spec.name, f"exited with code {code}; restarting in {delay:.1f}s", logfile)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
        finally:
            st.state = "stopped"
            st.pid = None
            self.on_change()
            logfile.close()

    def _line(self, name: str, text: str, logfile: IO[bytes]) -> None:
        logfile.write(f"[loom up] {text}\n".encode())
        if self.echo is not None:
            print(f"{name:<28} | [loom up] {text}", file=self.echo, flush=True)

    async def _pump(self, name: str, stream: asyncio.StreamReader, logfile: IO[bytes]) -> None:
        """Copy a child's output into its log file (and the terminal with --no-view), line by line."""
        prefix = f"{name:<28} | "
        while True:
            try:
                chunk = await stream.readline()
            except ValueError:  # a line longer than the stream limit: take what is there
                chunk = await stream.read(1 << 16)
            if not chunk:
                break
            logfile.write(chunk)
            if self.echo is not None:
                self.echo.write(prefix + chunk.decode("utf-8", errors="replace"))
                self.echo.flush()

    async def stop(self) -> None:
        """Drain: SIGTERM phase by phase in reverse start order, SIGKILL after the grace period."""
        if self.stopping:
            return
        self._stopping.set()
        for st in self.status.values():
            if st.pid is not None:
                st.state = "stopping"
        self.on_change()
        for phase in sorted({s.phase for s in self.specs}, reverse=True):
            group = [s.name for s in self.specs if s.phase == phase]
            await self._terminate([self._procs[n] for n in group if n in self._procs])
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
        self.on_change()
        self._stopped.set()

    async def kill_now(self) -> None:
        """SIGKILL every child at once (a second Ctrl-C)."""
        for proc in self._procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)

    async def _terminate(self, procs: list[asyncio.subprocess.Process]) -> None:
        live = [p for p in procs if p.returncode is None]
        for p in live:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        if not live:
            return
        _, pending = await asyncio.wait(
            [asyncio.create_task(p.wait()) for p in live], timeout=self.grace_seconds
        )
        if pending:
            for p in live:
                if p.returncode is None:
                    print(
                        f"loom up: {p.pid} did not stop within {self.grace_seconds:.0f}s; killing",
                        file=sys.stderr,
                    )
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, signal.SIGKILL)
            await asyncio.gather(*pending, return_exceptions=True)

    def snapshot(self) -> list[ProcessStatus]:
        """Current status of every child, in start order."""
        return [self.status[s.name] for s in self.specs]
