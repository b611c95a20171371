"""`POST /v1/embeddings` through the official `openai` client against the real server."""

from __future__ import annotations

import base64
import uuid

import httpx
import numpy as np
import openai
import pytest

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
GRAPHQL_EMBED = "query($t: [String!]!, $m: String) { embed(texts: $t, model: $m) { embeddings { vector } } }"


@pytest.fixture(scope="module")
def client(live_server):
    with openai.OpenAI(base_url=live_server.url + "/v1", api_key="not-checked-yet", max_retries=0) as c:
        yield c


def graphql_vectors(live_server, texts: list[str]) -> np.ndarray:
    body = live_server.graphql(GRAPHQL_EMBED, {"t": texts, "m": MODEL})
    assert "errors" not in body, body
    return np.array([e["vector"] for e in body["data"]["embed"]["embeddings"]], dtype=np.float64)


def test_float_and_base64_match_graphql_embed(live_server, client):
    texts = [f"openai client {uuid.uuid4().hex}", "a second, shorter text"]
    floats = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    assert floats.model == MODEL and [d.index for d in floats.data] == [0, 1]
    as_float = np.array([d.embedding for d in floats.data])
    raw = client.embeddings.create(model=MODEL, input=texts, encoding_format="base64")
    as_base64 = np.array([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in raw.data])
    default = client.embeddings.create(model=MODEL, input=texts)  # the client asks base64 and decodes it
    expected = graphql_vectors(live_server, texts)
    assert as_float.shape == (2, 384)
    np.testing.assert_array_equal(as_float, expected)
    np.testing.assert_array_equal(as_base64.astype(np.float64), expected)
    np.testing.assert_array_equal(np.array([d.embedding for d in default.data]), expected)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == raw.usage.prompt_tokens
    assert floats.usage.prompt_tokens > len(texts) * 2  # both texts' tokens, [CLS]/[SEP] included


def test_single_string_input_and_usage_counts_cached_texts_too(live_server, client):
    text = f"one string {uuid.uuid4().hex}"
    first = client.embeddings.create(model=MODEL, input=text, encoding_format="float")
    again = client.embeddings.create(model=MODEL, input=text, encoding_format="float")  # now a cache hit
    assert len(first.data) == 1 and first.data[0].embedding == again.data[0].embedding
    assert first.usage.prompt_tokens == again.usage.prompt_tokens > 2


@pytest.mark.parametrize(
    ("kwargs", "error", "param"),
    [
        ({"input": ["fine"], "dimensions": 128}, openai.BadRequestError, "dimensions"),
        ({"input": [""]}, openai.BadRequestError, "input"),
        ({"input": [[1, 2, 3]]}, openai.BadRequestError, "input"),
    ],
)
def test_bad_requests_get_openai_shaped_errors(client, kwargs, error, param):
    with pytest.raises(error) as raised:
        client.embeddings.create(model=MODEL, encoding_format="float", **kwargs)
    assert raised.value.status_code == 400
    assert raised.value.body["type"] == "invalid_request_error" and raised.value.body["param"] == param
    assert raised.value.body["message"]


def test_unknown_model_is_404_model_not_found(client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.embeddings.create(model="no/such-model", input="x")
    assert raised.value.body["code"] == "model_not_found"


def test_native_dimensions_are_accepted_and_malformed_bodies_refused(live_server, client):
    ok = client.embeddings.create(model=MODEL, input="x", dimensions=384, encoding_format="float")
    assert len(ok.data[0].embedding) == 384
    for content in (b"{not json", b"[1, 2]", b'{"model": "m"}', b'{"input": "x", "encoding_format": "hex"}'):
        response = httpx.post(live_server.url + "/v1/embeddings", content=content)
        assert response.status_code == 400, content
        assert response.json()["error"]["type"] == "invalid_request_error", response.text
