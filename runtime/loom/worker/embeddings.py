"""Vector embeddings behind one interface: Ollama's ``/api/embed`` or an OpenAI-compatible ``/embeddings``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from loom.llm.endpoints import EndpointRules
from loom.llm.errors import Unavailable
from loom.llm.guarded import require_endpoint
from loom.llm.http import HttpPool, post_json


class EmbeddingProvider(ABC):
    """Turns texts into vectors."""

    async def embed(self, text: str) -> list[float]:
        """One text's vector."""
        return (await self.embed_batch([text]))[0]

    @abstractmethod
    async def embed_batch(self, texts: list[str]) -> list[list[float]]:
        """Vectors for several texts, in order."""

    @property
    @abstractmethod
    def dimensions(self) -> int | None:
        """Vector size, once known."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def _vectors(raw: Any, count: int, where: str) -> list[list[float]]:
    if not isinstance(raw, list) or len(raw) != count or not all(isinstance(v, list) for v in raw):
        raise Unavailable(f"{where}: expected {count} embedding vector(s)")
    return [[float(x) for x in v] for v in raw]


class _HttpEmbeddings(EmbeddingProvider):
    def __init__(self, model: str, base_url: str, timeout: float, headers: dict[str, str]):
        self.model = model
        self.base_url = base_url
        self._dimensions: int | None = None
        self._client = HttpPool(base_url, timeout=timeout, headers=headers)

    @property
    def dimensions(self) -> int | None:
        return self._dimensions

    def _remember(self, vectors: list[list[float]]) -> list[list[float]]:
        if vectors and self._dimensions is None:
            self._dimensions = len(vectors[0])
        return vectors

    async def close(self) -> None:
        await self._client.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r})"


class OllamaEmbeddingProvider(_HttpEmbeddings):
    """Ollama's ``POST /api/embed`` (``{"model", "input": [...]}`` → ``{"embeddings": [...]}``)."""

    def __init__(
        self, model: str = "nomic-embed-text", base_url: str = "http://127.0.0.1:11434", timeout: float = 60.0
    ):
        super().__init__(model, base_url, timeout, {})

    async def embed_batch(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        data = await post_json(self._client, "api/embed", {"model": self.model, "input": texts})
        return self._remember(_vectors(data.get("embeddings"), len(texts), "ollama /api/embed"))


class OpenAIEmbeddingProvider(_HttpEmbeddings):
    """An OpenAI-compatible ``POST /embeddings`` (``data[].embedding``, ordered by ``index``)."""

    def __init__(
        self,
        model: str,
        base_url: str = "https://api.openai.com/v1",
        api_key: str | None = None,
        timeout: float = 60.0,
    ):
        super().__init__(model, base_url, timeout, {"authorization": f"Bearer {api_key}"} if api_key else {})

    async def embed_batch(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        data = await post_json(self._client, "embeddings", {"model": self.model, "input": texts})
        items = data.get("data")
        if not isinstance(items, list):
            raise Unavailable("openai /embeddings: answer has no data list")
        ordered = sorted(items, key=lambda d: d.get("index", 0) if isinstance(d, dict) else 0)
        raw = [d.get("embedding") if isinstance(d, dict) else None for d in ordered]
        return self._remember(_vectors(raw, len(texts), "openai /embeddings"))


class GuardedEmbeddingProvider(EmbeddingProvider):
    """An HTTP embedding provider whose endpoint is checked against the allow-list before every call
    (the same rules as a tier's ``baseUrl``): nothing, not even its API key, goes to a refused host."""

    def __init__(self, inner: OllamaEmbeddingProvider | OpenAIEmbeddingProvider, rules: EndpointRules):
        self.inner = inner
        self.model = inner.model
        self.rules = rules

    @property
    def dimensions(self) -> int | None:
        return self.inner.dimensions

    async def embed_batch(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        await require_endpoint(self.inner.base_url, self.rules)
        return await self.inner.embed_batch(texts)

    async def close(self) -> None:
        await self.inner.close()

    def __repr__(self) -> str:
        return f"GuardedEmbeddingProvider({self.inner!r})"
