"""Embedding providers by name, and the offline default that needs no network.

``offline`` is WordLlama's ``l2_supercat`` model (256 dimensions), whose weights and tokenizer
ship inside the ``wordllama`` wheel (about 19 MB; numpy and tokenizers, no deep-learning
framework). It is loaded from the package's own files: the library's ``load()`` would look
for the tokenizer in the wrong folder and then download it. ``ollama`` and ``openai`` are the
HTTP providers of :mod:`loom.worker.embeddings`; Ollama's address defaults to ``OLLAMA_HOST``,
as for Ollama's own client, then ``http://127.0.0.1:11434``. Their URLs obey the model-endpoint
allow-list (``LOOM_MODEL_ENDPOINTS``, the RouterPolicy's ``modelEndpoints``) like a tier's ``baseUrl``:
checked when the provider is built, and the host's addresses again before every request.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from loom.llm.endpoints import EndpointRefused, check_url, rules_from_env
from loom.worker.embeddings import (
    EmbeddingProvider,
    GuardedEmbeddingProvider,
    OllamaEmbeddingProvider,
    OpenAIEmbeddingProvider,
)

#: Provider names accepted by :func:`make_embedding_provider`.
PROVIDERS = ("offline", "ollama", "openai")
OFFLINE_MODEL = "wordllama-l2-supercat-256"

_lock = threading.Lock()
_model: Any = None


class EmbeddingConfigError(ValueError):
    """An embedding configuration names an unknown provider or lacks what the provider needs."""


def _offline_model() -> Any:
    global _model
    with _lock:
        if _model is None:
            try:
                import wordllama
                from safetensors import safe_open
                from wordllama import WordLlama
                from wordllama.inference import WordLlamaInference
            except ModuleNotFoundError as exc:
                raise EmbeddingConfigError(
                    f"the offline embedding model is not installed ({exc.name}): pip install 'loom-k8s[rag]'"
                ) from None
            root = Path(wordllama.__file__).parent
            tokenizer = WordLlama.load_tokenizer(root / "tokenizers" / "l2_supercat_tokenizer_config.json")
            with safe_open(str(root / "weights" / "l2_supercat_256.safetensors"), framework="np") as f:
                weights = f.get_tensor("embedding.weight")
            _model = WordLlamaInference(weights, tokenizer)
        return _model


def embed_offline(texts: list[str]) -> list[list[float]]:
    """Unit-length vectors for ``texts`` from the bundled model (blocking)."""
    if not texts:
        return []
    vectors = _offline_model().embed(texts, norm=True)
    return [[float(x) for x in row] for row in vectors]


class OfflineEmbeddingProvider(EmbeddingProvider):
    """The bundled WordLlama model, run in a thread so the event loop keeps serving."""

    model = OFFLINE_MODEL

    @property
    def dimensions(self) -> int | None:
        return 256

    async def embed_batch(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(embed_offline, texts)

    def __repr__(self) -> str:
        return "OfflineEmbeddingProvider()"


def make_embedding_provider(
    provider: str = "offline",
    model: str | None = None,
    base_url: str | None = None,
    api_key_env: str | None = None,
    env: Mapping[str, str] | None = None,
) -> EmbeddingProvider:
    """Build a provider from configuration fields (the same fields in every tool and backend)."""
    e = os.environ if env is None else env
    if provider == "offline":
        if model not in (None, OFFLINE_MODEL):
            raise EmbeddingConfigError(f"the offline provider has one model, {OFFLINE_MODEL}, not {model!r}")
        return OfflineEmbeddingProvider()
    inner: OllamaEmbeddingProvider | OpenAIEmbeddingProvider
    if provider == "ollama":
        url = base_url or e.get("OLLAMA_HOST") or "http://127.0.0.1:11434"
        if "://" not in url:
            url = f"http://{url}"  # Ollama's own OLLAMA_HOST convention: host:port
        _check_endpoint(url, e)
        inner = OllamaEmbeddingProvider(model or "nomic-embed-text", url)
    elif provider == "openai":
        if not model:
            raise EmbeddingConfigError("the openai embedding provider needs embedding_model")
        key = e.get(api_key_env) if api_key_env else None
        if api_key_env and not key:
            raise EmbeddingConfigError(f"environment variable {api_key_env} (the embedding key) is not set")
        url = base_url or "https://api.openai.com/v1"
        _check_endpoint(url, e)
        inner = OpenAIEmbeddingProvider(model, url, api_key=key)
    else:
        raise EmbeddingConfigError(f"unknown embedding provider {provider!r}; one of {', '.join(PROVIDERS)}")
    return GuardedEmbeddingProvider(inner, rules_from_env(e))


class LazyEmbedding:
    """A backend's embedding provider, built from its configuration fields at first use (or given)."""

    def __init__(
        self,
        provider: str,
        model: str | None,
        base_url: str | None,
        api_key_env: str | None,
        embedder: EmbeddingProvider | None = None,
    ):
        self._embedding_args = (provider, model, base_url, api_key_env)
        self._embedder = embedder

    @property
    def embedder(self) -> EmbeddingProvider:
        if self._embedder is None:
            self._embedder = make_embedding_provider(*self._embedding_args)
        return self._embedder

    @property
    def model_name(self) -> str:
        """The embedding model's name, as the store records it with each ingest."""
        provider, model = self._embedding_args[:2]
        return str(getattr(self.embedder, "model", None) or model or provider)

    async def close(self) -> None:
        if self._embedder is not None:
            await self._embedder.close()


def _check_endpoint(url: str, env: Mapping[str, str]) -> None:
    try:
        check_url(url, rules_from_env(env))
    except EndpointRefused as exc:
        raise EmbeddingConfigError(
            f"embedding {exc}; the allow-list is the RouterPolicy's modelEndpoints "
            "(env LOOM_MODEL_ENDPOINTS)"
        ) from None
