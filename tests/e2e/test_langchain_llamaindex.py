"""LangChain's OpenAIEmbeddings and LlamaIndex's OpenAIEmbedding, the real packages, against a real
Citadel server's POST /v1/embeddings, running the README's examples as written (only the address
changed), with the internet blocked in this process: their vectors equal GraphQL `embed` of the
same texts. Also: up to 2,048 inputs in one request, 2,049 refused before any work, and token
arrays refused with a message that says what to set. The embedding cache is off, so every vector
compared was computed by its own request (the OpenAI route's in slices, GraphQL's 256 at most)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import BUNDLED, bundled_server
from tests.support.databases import create_database, drop_database
from tests.support.no_internet import NoInternet

README = Path(__file__).resolve().parents[2] / "README.md"
README_URL = "http://127.0.0.1:8000"
GRAPHQL_EMBED = "query($t: [String!]!, $m: String) { embed(texts: $t, model: $m) { embeddings { vector } } }"
TOLERANCE = 1e-5

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def no_internet():
    """Installed before either package is imported (their imports happen in the tests), so a
    download at import would be caught too."""
    guard = NoInternet()
    with pytest.MonkeyPatch.context() as patch:
        for name in ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "OPENAI_BASE_URL", "OPENAI_API_BASE"):
            patch.delenv(name, raising=False)
        guard.install(patch)
        yield guard


@pytest.fixture(scope="module")
async def server(tmp_path_factory):
    database = await create_database("citadel_langchain_e2e")
    live = bundled_server(
        tmp_path_factory.mktemp("citadel-langchain"),
        database,
        "langchain-llamaindex-e2e-server.log",
        CITADEL_CACHE__ENABLED="false",
    )
    live.start()
    try:
        yield live
    finally:
        live.stop()
        await drop_database(database)


def readme_example(package: str) -> str:
    """The README's Python example that imports `package`."""
    section = README.read_text().split("### OpenAI-compatible embeddings", 1)[1].split("\n### ", 1)[0]
    blocks = [b for b in re.findall(r"```python\n(.*?)```", section, flags=re.S) if f"from {package}" in b]
    assert len(blocks) == 1, f"one README example imports {package}: {blocks}"
    assert README_URL in blocks[0]
    return blocks[0]


def run_readme_example(package: str, server, texts: list[str]) -> dict[str, Any]:
    scope: dict[str, Any] = {"texts": texts}
    exec(compile(readme_example(package).replace(README_URL, server.url), f"README:{package}", "exec"), scope)
    return scope


def graphql_vectors(server, texts: list[str]) -> np.ndarray:
    rows = []
    for start in range(0, len(texts), 250):  # GraphQL embed keeps its own cap (256)
        body = server.graphql(GRAPHQL_EMBED, {"t": texts[start : start + 250], "m": BUNDLED})
        assert "errors" not in body, body
        rows.extend(e["vector"] for e in body["data"]["embed"]["embeddings"])
    return np.array(rows, dtype=np.float64)


def corpus(n: int, tag: str) -> list[str]:
    """Distinct texts of varied lengths, no newlines (LlamaIndex would replace them)."""
    topics = ["harbour cranes", "sourdough starters", "tidal energy", "chess openings", "glacier retreat"]
    return [f"{tag} note {i}: " + f"about {topics[i % len(topics)]} and what they change, " * (1 + i % 7) for i in range(n)]


def batch_sizes(server) -> float:
    """Texts the server's model has encoded so far (citadel_batch_size_sum over every model)."""
    text = httpx.get(server.url + "/metrics", timeout=30).text
    return sum(float(v) for v in re.findall(r"^citadel_batch_size_sum\{[^}]*\} (\S+)$", text, flags=re.M))


def test_langchain_default_chunk_size_embeds_1500_texts_equal_to_graphql_embed(server, no_internet):
    from langchain_openai import OpenAIEmbeddings

    assert OpenAIEmbeddings.model_fields["chunk_size"].default == 1000  # so 1,500 texts is a 1,000-text request
    texts = corpus(1500, f"langchain {uuid.uuid4().hex[:8]}")
    scope = run_readme_example("langchain_openai", server, texts)
    assert scope["embeddings"].chunk_size == 1000 and scope["embeddings"].check_embedding_ctx_length is False
    vectors = np.array(scope["vectors"], dtype=np.float64)
    assert vectors.shape == (1500, 384)
    # Every fifth text against GraphQL: it spans both of LangChain's requests and all seven text
    # lengths, and a request answered out of order (a length-sorted batch not put back) differs there.
    sample = list(range(0, 1500, 5))
    np.testing.assert_allclose(vectors[sample], graphql_vectors(server, [texts[i] for i in sample]), atol=TOLERANCE, rtol=0)
    query = np.array(scope["query"], dtype=np.float64)
    np.testing.assert_allclose(query, graphql_vectors(server, ["what do embeddings capture?"])[0], atol=TOLERANCE, rtol=0)
    assert no_internet.attempts == []


def test_llamaindex_embeds_texts_equal_to_graphql_embed(server, no_internet):
    texts = corpus(5, f"llamaindex {uuid.uuid4().hex[:8]}")
    scope = run_readme_example("llama_index", server, texts)
    vectors = np.array(scope["vectors"], dtype=np.float64)
    assert vectors.shape == (5, 384)
    np.testing.assert_allclose(vectors, graphql_vectors(server, texts), atol=TOLERANCE, rtol=0)
    query = np.array(scope["query"], dtype=np.float64)
    np.testing.assert_allclose(query, graphql_vectors(server, ["what do embeddings capture?"])[0], atol=TOLERANCE, rtol=0)
    assert no_internet.attempts == []


def test_llamaindex_model_takes_only_openai_names(no_internet):
    from llama_index.embeddings.openai import OpenAIEmbedding

    with pytest.raises(ValueError):  # what the README says: model_name= for a catalog model
        OpenAIEmbedding(model=BUNDLED, api_base=README_URL + "/v1", api_key="unused")
    assert no_internet.attempts == []


def test_langchain_defaults_get_a_400_that_says_what_to_set(server, no_internet, monkeypatch):
    import openai
    from langchain_openai import OpenAIEmbeddings

    # LangChain's default tokenizes with tiktoken's cl100k_base, a file it fetches from the internet
    # on first use; LlamaIndex ships that file, so this test runs offline.
    import llama_index.core

    cache = Path(llama_index.core.__file__).parent / "_static" / "tiktoken_cache"
    assert any(cache.iterdir()), cache
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    embeddings = OpenAIEmbeddings(model=BUNDLED, base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as raised:
        embeddings.embed_documents(["a text LangChain turns into token ids"])
    assert raised.value.status_code == 400
    assert "check_embedding_ctx_length=False" in raised.value.body["message"], raised.value.body
    assert no_internet.attempts == []


@pytest.mark.parametrize("tokens", [[101, 7592, 102], [[101, 7592, 102], [101, 2088, 102]]], ids=["one", "several"])
def test_token_arrays_get_a_400_saying_to_send_strings_and_what_langchain_needs(server, tokens):
    response = httpx.post(server.url + "/v1/embeddings", json={"model": BUNDLED, "input": tokens}, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "input" and error["code"] == "bad_input"
    assert "strings" in error["message"] and "check_embedding_ctx_length=False" in error["message"], error


@pytest.mark.parametrize(
    ("items", "fragment"),
    [(["fine", 3], "item 1 is a number"), (["fine", None], "item 1 is null"), ([True], "item 0 is a boolean")],
)
def test_a_list_that_is_neither_strings_nor_token_arrays_names_the_item(server, items, fragment):
    response = httpx.post(server.url + "/v1/embeddings", json={"model": BUNDLED, "input": items}, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "input" and fragment in error["message"], error


def test_2048_inputs_are_one_request_and_2049_are_refused_before_any_work(server):
    texts = [f"short input {i} {uuid.uuid4().hex[:6]}" for i in range(2048)]
    response = httpx.post(
        server.url + "/v1/embeddings",
        json={"model": BUNDLED, "input": texts, "encoding_format": "float"},
        timeout=600,
    )
    assert response.status_code == 200, response.text[:500]
    data = response.json()["data"]
    assert [d["index"] for d in data] == list(range(2048))
    sample = [0, 255, 256, 1000, 2047]  # across slices
    np.testing.assert_allclose(
        np.array([data[i]["embedding"] for i in sample]), graphql_vectors(server, [texts[i] for i in sample]),
        atol=TOLERANCE, rtol=0,
    )

    before = batch_sizes(server)
    refused = httpx.post(server.url + "/v1/embeddings", json={"model": BUNDLED, "input": texts + ["one more"]}, timeout=60)
    assert refused.status_code == 400, refused.text[:500]
    error = refused.json()["error"]
    assert error["param"] == "input" and error["code"] == "bad_input"
    assert "2049" in error["message"] and "at most 2048" in error["message"], error
    assert "CITADEL_LIMITS__MAX_INPUTS_PER_OPENAI_REQUEST" in error["message"], error
    assert batch_sizes(server) == before  # nothing reached the model
