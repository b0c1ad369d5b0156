"""How the embedded llama.cpp server is run: one decision for ``loom up``, ``loom eval`` and the tests.

llama-cpp-python's server (``python -m llama_cpp.server``) holds one model behind one lock:
it answers one request at a time and has no parallel slots (llama.cpp's own ``llama-server
--parallel`` has them; this server has no such setting). So parallel requests are served by
several server processes on the one model file (mapped, so its pages are shared), each with its
share of the cores, behind one address (:mod:`loom.llm.balancer`); how many is
:func:`server_count` (``LOOM_LOCAL_SERVERS`` overrides). What can be chosen per server is how
fast each request goes:

- ``n_batch``: prompt tokens evaluated per step. One token at a time reads a prompt several times
  slower than a batch; a batch of 512 covers the sample workers' prompts in one step. Some builds
  fault on multi-token batches (a native build using AMX on a CPU that advertises it); there
  ``LOOM_LOCAL_N_BATCH=1`` is the switch, and :func:`loom.llm.local_server.probe_batch` detects a
  crash at start and falls back to 1.
- threads: the cores this process may use (CPU affinity, capped by a cgroup CPU quota), see
  :func:`default_threads`; ``LOOM_LOCAL_THREADS`` overrides. The threads wait for each other
  passively (``OMP_WAIT_POLICY=PASSIVE``, :func:`llama_server_env`): llama.cpp's OpenMP threads
  otherwise spin while waiting, and with the workers, NATS and other programs on the same
  cores, a spinning thread holds the core its partner needs (measured on a busy 2-core machine:
  a 360-token prompt with 80 tokens out took 67 to 149 s spinning, 8 to 18 s waiting passively).
- the prompt cache (``--cache``): the server keeps the model state after each request, keyed by
  its tokens, and restores the longest matching one for the next request. Each worker sends the
  same system prompt first on every task, so a worker's prefix is evaluated once, even when the
  workers take turns on the one model.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

#: Prompt tokens per evaluation step (llama.cpp's default; also the physical batch).
DEFAULT_BATCH = 512
#: Bytes of model states the prompt cache keeps (one state of SmolLM2-135M at 2,048 tokens is ~50 MB).
DEFAULT_CACHE_BYTES = 512 * 1024 * 1024
BATCH_ENV = "LOOM_LOCAL_N_BATCH"
THREADS_ENV = "LOOM_LOCAL_THREADS"
CACHE_ENV = "LOOM_LOCAL_PROMPT_CACHE"
SERVERS_ENV = "LOOM_LOCAL_SERVERS"
#: Most servers chosen by default: each one holds its own context and prompt cache in memory.
MAX_DEFAULT_SERVERS = 4


class LlamaSettingsError(ValueError):
    """A setting of the embedded model server is not usable (says which and why)."""


@dataclass(frozen=True)
class LlamaServerSettings:
    """Everything the server command line is built from."""

    model: Path
    port: int
    host: str = "127.0.0.1"
    n_ctx: int = 2048
    n_threads: int = 1
    n_batch: int = DEFAULT_BATCH
    prompt_cache: bool = True
    cache_bytes: int = DEFAULT_CACHE_BYTES
    alias: str | None = None
    #: True when ``n_batch`` was set by the user (then never changed by the start-up probe).
    batch_chosen: bool = False

    def with_batch(self, n_batch: int) -> LlamaServerSettings:
        """The same settings with another batch size."""
        return replace(self, n_batch=n_batch)


def llama_server_argv(settings: LlamaServerSettings, python: str) -> tuple[str, ...]:
    """The command line of ``python -m llama_cpp.server`` for ``settings``."""
    threads = str(settings.n_threads)
    batch = str(settings.n_batch)
    argv = [
        python,
        "-m",
        "llama_cpp.server",
        "--model",
        str(settings.model),
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--n_ctx",
        str(settings.n_ctx),
        "--n_batch",
        batch,
        "--n_ubatch",
        batch,
        "--n_threads",
        threads,
        "--n_threads_batch",
        threads,
    ]
    if settings.alias:
        argv += ["--model_alias", settings.alias]
    if settings.prompt_cache:
        argv += ["--cache", "true", "--cache_type", "ram", "--cache_size", str(settings.cache_bytes)]
    return tuple(argv)


def llama_server_env(environ: Mapping[str, str]) -> dict[str, str]:
    """Environment to add for the server process: passive waiting of the OpenMP threads, unless
    the environment already chooses a policy."""
    return {} if environ.get("OMP_WAIT_POLICY") else {"OMP_WAIT_POLICY": "PASSIVE"}


def cores_from(affinity: int, cpu_max: str | None) -> int:
    """Cores a process may use: its CPU affinity, capped by a cgroup v2 ``cpu.max`` quota
    (``"<quota> <period>"`` or ``"max <period>"``), rounded up, at least 1."""
    cores = max(1, affinity)
    if cpu_max:
        parts = cpu_max.split()
        if len(parts) == 2 and parts[0] != "max":
            try:
                quota, period = int(parts[0]), int(parts[1])
            except ValueError:
                return cores
            if quota > 0 and period > 0:
                cores = min(cores, max(1, math.ceil(quota / period)))
    return cores


def available_cores(cgroup_cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """Cores this process may use now (affinity and cgroup quota, where the platform has them)."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = os.cpu_count() or 1
    try:
        cpu_max: str | None = cgroup_cpu_max.read_text()
    except OSError:
        cpu_max = None
    return cores_from(affinity, cpu_max)


def default_threads(cores: int) -> int:
    """Threads for the model: every core it may use, but one left to the rest of local mode (NATS,
    router, workers) from four cores up. llama.cpp's threads spin while they wait for each
    other, so a thread more than the cores actually free slows every step."""
    return cores - 1 if cores >= 4 else cores


def default_servers(cores: int, widest: int) -> int:
    """Servers for the local model: one per request that can be in flight at once (the widest
    parallel level of the pipelines served), no more than the cores (a server per core at least)
    nor :data:`MAX_DEFAULT_SERVERS`; at least 1."""
    return max(1, min(cores, widest, MAX_DEFAULT_SERVERS))


def threads_per_server(cores: int, servers: int) -> int:
    """Each server's share of :func:`default_threads`, rounded up, at least 1 (its threads wait
    passively, so a share rounded up costs little when the servers are not all busy)."""
    return max(1, math.ceil(default_threads(cores) / max(1, servers)))


def server_count(env: Mapping[str, str], cores: int, widest: int) -> int:
    """``LOOM_LOCAL_SERVERS`` if set, else :func:`default_servers`."""
    return _positive_int(env, SERVERS_ENV) or default_servers(cores, widest)


def _positive_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise LlamaSettingsError(f"{name}={raw!r} is not a whole number") from None
    if value < 1:
        raise LlamaSettingsError(f"{name}={raw!r} must be 1 or more")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise LlamaSettingsError(f"{name}={raw!r} is not a switch (use 1/0, true/false, on/off)")


def settings_from_env(
    model: Path,
    port: int,
    env: Mapping[str, str],
    cores: int,
    *,
    host: str = "127.0.0.1",
    n_ctx: int = 2048,
    alias: str | None = None,
    servers: int = 1,
) -> LlamaServerSettings:
    """The settings of one of ``servers`` servers: the defaults above (threads: its share of the
    cores), overridden by ``LOOM_LOCAL_N_BATCH``, ``LOOM_LOCAL_THREADS`` (per server) and
    ``LOOM_LOCAL_PROMPT_CACHE``."""
    batch = _positive_int(env, BATCH_ENV)
    return LlamaServerSettings(
        model=model,
        port=port,
        host=host,
        n_ctx=n_ctx,
        n_threads=_positive_int(env, THREADS_ENV) or threads_per_server(cores, servers),
        n_batch=batch or DEFAULT_BATCH,
        prompt_cache=_flag(env, CACHE_ENV, True),
        alias=alias,
        batch_chosen=batch is not None,
    )
