"""Cohere's Python SDK (`cohere.ClientV2` on /v2/rerank and `cohere.Client` on /v1/rerank) and
LangChain's `CohereRerank` (langchain-cohere), the real packages, against a real Citadel server
serving the test cross-encoder, running the README's Rerank examples as written (only the address,
the key and the model swapped in), with the internet blocked in this process: their scores equal
CrossEncoder.predict of the same pairs within 1e-4, best first, top_n honoured; the SDK parses
Citadel's `id`, `meta`, `results[].document` and its coded errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import reranker_server
from tests.support.no_internet import NoInternet
from tests.support.cross_encoders import (  # noqa: F401  (a session fixture; cross_encoder_dir: conftest)
    DOCUMENTS,
    QUERY,
    RERANKER,
    reference_cross_encoder,
)

README = Path(__file__).resolve().parents[2] / "README.md"
README_URL = "http://127.0.0.1:8000"
README_KEY = "ctd_..."
README_MODEL = "cross-encoder/ms-marco-MiniLM-L-6-v2"
ADMIN = "ctd_rerank-clients-e2e-admin-secret"
TOLERANCE = 1e-4

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def no_internet():
    """Installed before cohere or langchain_cohere is imported (their imports happen in the tests;
    cohere reads CO_API_URL into a default argument at import), so a call out at import is caught."""
    guard = NoInternet()
    with pytest.MonkeyPatch.context() as patch:
        for name in ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "CO_API_URL", "CO_API_KEY", "COHERE_API_KEY"):
            patch.delenv(name, raising=False)
        guard.install(patch)
        yield guard


@pytest.fixture
def paths(monkeypatch) -> list[str]:
    """The path of every request an httpx.Client sends in this test (cohere's SDK uses httpx)."""
    sent: list[str] = []
    send = httpx.Client.send

    def recording(client: httpx.Client, request: httpx.Request, *args: Any, **kwargs: Any) -> httpx.Response:
        sent.append(request.url.path)
        return send(client, request, *args, **kwargs)

    monkeypatch.setattr(httpx.Client, "send", recording)
    return sent


@pytest.fixture(scope="module")
async def server(tmp_path_factory, cross_encoder_dir: Path):
    async with reranker_server(tmp_path_factory.mktemp("citadel-rerank-clients"), "rerank_clients_e2e", cross_encoder_dir, ADMIN) as live:
        yield live


def readme_example(marker: str) -> str:
    """The README Rerank section's one Python example with a line matching `marker`."""
    section = README.read_text().split("### Rerank", 1)[1].split("\n### ", 1)[0]
    blocks = [b for b in re.findall(r"```python\n(.*?)```", section, flags=re.S) if re.search(marker, b, flags=re.M)]
    assert len(blocks) == 1, f"one README Rerank example matches {marker!r}: {blocks}"
    for placeholder in (README_URL, README_KEY, README_MODEL):
        assert placeholder in blocks[0], (placeholder, blocks[0])
    return blocks[0]


def run(source: str, server, name: str) -> dict[str, Any]:
    """The example with only the address, the key and the model swapped in."""
    source = source.replace(README_URL, server.url).replace(README_KEY, ADMIN).replace(README_MODEL, RERANKER)
    scope: dict[str, Any] = {}
    exec(compile(source, f"README:{name}", "exec"), scope)
    return scope


def best_first(scores: np.ndarray, n: int | None = None) -> list[int]:
    return [int(i) for i in np.argsort(-scores, kind="stable")[:n]]


def top_n_of(source: str) -> int:
    found = re.findall(r"top_n=(\d+)", source)
    assert len(found) == 1, found
    return int(found[0])


COHERE_EXAMPLE = r"^import cohere$"
LANGCHAIN_EXAMPLE = r"^from langchain_cohere import CohereRerank$"


@pytest.mark.parametrize(("client", "path"), [("ClientV2", "/v2/rerank"), ("Client", "/v1/rerank")])
def test_readme_cohere_example_equals_cross_encoder_predict(
    server, no_internet, reference_cross_encoder, paths, capsys, client, path  # noqa: F811
) -> None:
    import cohere

    source = readme_example(COHERE_EXAMPLE)
    assert "cohere.ClientV2(" in source
    assert "`cohere.Client` (v1) takes the same arguments" in " ".join(README.read_text().split())
    if client == "Client":  # what the README says of the v1 client: the same arguments
        assert hasattr(cohere, "Client")
        source = source.replace("cohere.ClientV2(", "cohere.Client(")
    scope = run(source, server, client)
    assert type(scope["co"]) is getattr(cohere, client)
    assert paths == [path]

    query, documents, result = scope["query"], scope["documents"], scope["result"]
    expected = reference_cross_encoder.predict([(query, d) for d in documents])
    n = top_n_of(source)
    assert n < len(documents)
    assert [r.index for r in result.results] == best_first(expected, n)
    for r in result.results:
        assert abs(r.relevance_score - float(expected[r.index])) < TOLERANCE
    assert result.id and result.meta.billed_units.search_units == 1
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed] == [str(i) for i in best_first(expected, n)]
    assert [line.split(maxsplit=2)[2] for line in printed] == [documents[i] for i in best_first(expected, n)]
    assert no_internet.attempts == []


def test_cohere_clients_rank_many_documents_and_v1_returns_their_text(
    server, no_internet, reference_cross_encoder, paths  # noqa: F811
) -> None:
    import cohere

    expected = reference_cross_encoder.predict([(QUERY, d) for d in DOCUMENTS])
    v2 = cohere.ClientV2(base_url=server.url, api_key=ADMIN).rerank(
        model=RERANKER, query=QUERY, documents=DOCUMENTS, top_n=5
    )
    assert [r.index for r in v2.results] == best_first(expected, 5)
    assert max(abs(r.relevance_score - float(expected[r.index])) for r in v2.results) < TOLERANCE

    mixed = [{"text": d} if i % 2 else d for i, d in enumerate(DOCUMENTS)]  # v1 takes strings and {text} objects
    v1 = cohere.Client(base_url=server.url, api_key=ADMIN).rerank(
        model=RERANKER, query=QUERY, documents=mixed, top_n=5, return_documents=True
    )
    assert [r.index for r in v1.results] == best_first(expected, 5)
    assert max(abs(r.relevance_score - float(expected[r.index])) for r in v1.results) < TOLERANCE
    assert [r.document.text for r in v1.results] == [DOCUMENTS[i] for i in best_first(expected, 5)]

    everything = cohere.Client(base_url=server.url, api_key=ADMIN).rerank(
        model=RERANKER, query=QUERY, documents=DOCUMENTS
    )
    assert [r.index for r in everything.results] == best_first(expected)  # no top_n: every document
    assert all(r.document is None for r in everything.results)  # return_documents left out
    assert paths == ["/v2/rerank", "/v1/rerank", "/v1/rerank"]
    assert no_internet.attempts == []


def test_cohere_clients_raise_their_own_errors_with_citadel_messages(server, no_internet) -> None:
    import cohere
    from cohere.errors import BadRequestError, NotFoundError, UnauthorizedError

    for make in (cohere.Client, cohere.ClientV2):
        with pytest.raises(BadRequestError) as too_many:
            make(base_url=server.url, api_key=ADMIN).rerank(model=RERANKER, query=QUERY, documents=["x"] * 21)
        assert "at most 20" in too_many.value.body["message"], too_many.value.body
        with pytest.raises(NotFoundError):
            make(base_url=server.url, api_key=ADMIN).rerank(model="no/such", query=QUERY, documents=["x"])
        with pytest.raises(UnauthorizedError) as refused:
            make(base_url=server.url, api_key="ctd_not-a-key").rerank(model=RERANKER, query=QUERY, documents=["x"])
        assert refused.value.body["code"] == "UNAUTHENTICATED", refused.value.body
    assert no_internet.attempts == []


def test_readme_langchain_example_orders_documents_as_cross_encoder_predict(
    server, no_internet, reference_cross_encoder, paths, capsys  # noqa: F811
) -> None:
    import cohere
    from langchain_core.documents import Document

    source = readme_example(LANGCHAIN_EXAMPLE)
    scope = run(source, server, "langchain_cohere")
    assert isinstance(scope["reranker"].client, cohere.ClientV2)
    assert paths == ["/v2/rerank"]

    docs, best = scope["docs"], scope["best"]
    query = re.search(r'compress_documents\(docs, query="([^"]+)"\)', source).group(1)
    expected = reference_cross_encoder.predict([(query, d.page_content) for d in docs])
    n = top_n_of(source)
    assert n < len(docs) and len(best) == n
    order = best_first(expected, n)
    assert [d.page_content for d in best] == [docs[i].page_content for i in order]
    for doc, i in zip(best, order):
        assert isinstance(doc, Document)
        assert abs(doc.metadata["relevance_score"] - float(expected[i])) < TOLERANCE
        assert doc.metadata["source"] == docs[i].metadata["source"]  # the document's own metadata kept
    assert all("relevance_score" not in d.metadata for d in docs)  # copies, the inputs untouched
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed] == [docs[i].metadata["source"] for i in order]

    # The same reranker over the test's 16 documents, every one back (top_n=None), best first.
    many = [Document(page_content=d) for d in DOCUMENTS]
    ranked = scope["reranker"].rerank(many, QUERY, top_n=None)
    expected = reference_cross_encoder.predict([(QUERY, d) for d in DOCUMENTS])
    assert [r["index"] for r in ranked] == best_first(expected)
    assert max(abs(r["relevance_score"] - float(expected[r["index"]])) for r in ranked) < TOLERANCE
    assert no_internet.attempts == []
