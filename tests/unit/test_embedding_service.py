"""EmbeddingService with a fake pool, cache and catalog: validation, prompts, dedup, order."""

from __future__ import annotations

import numpy as np
import pytest

from app.domain.access import ANONYMOUS, Principal, Scope
from app.domain.embedding import EmbedKind
from app.errors import BadInput, ModelUnavailable
from app.services.embedding import EmbeddingService
from app.domain.models import FALLBACK_MODEL
from app.settings import Settings
from tests.support.fakes import FakeBackend, FakeCache, FakeModels, FakePool

DIMS = 384


def make_service(cache: FakeCache | None = None, **spec_update: object) -> tuple[EmbeddingService, FakePool]:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    settings.limits = settings.limits.model_copy(
        update={"max_texts_per_request": 5, "max_text_chars": 50, "max_request_chars": 120}
    )
    spec = settings.models[FALLBACK_MODEL].model_copy(update=spec_update)
    pool = FakePool(FakeBackend(dimensions=DIMS, scale=1.0))
    return EmbeddingService(settings, pool, cache, FakeModels(spec)), pool  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("texts", "fragment", "index"),
    [
        ([], "must not be empty", None),
        (["ok"] * 6, "at most 5", None),
        (["ok", ""], "text 1 is blank", 1),
        (["ok", "fine", " \n\t "], "text 2 is blank", 2),
        (["ok", "x" * 51], "text 1 has 51 characters", 1),
        (["x" * 50, "y" * 50, "z" * 30], "at text 2", 2),
    ],
)
async def test_bad_input_names_the_problem_before_any_work(texts, fragment, index):
    service, pool = make_service()
    with pytest.raises(BadInput) as error:
        await service.embed(texts)
    assert fragment in error.value.message
    assert error.value.extensions.get("index") == index
    assert pool.calls == []


async def test_vectors_come_back_in_input_order_and_duplicates_are_embedded_once():
    service, pool = make_service()
    outcome = await service.embed(["b", "a", "b", "c", "a"])
    assert pool.calls == [["b", "a", "c"]]
    assert outcome.model == FALLBACK_MODEL and outcome.dimensions == DIMS
    assert outcome.vectors.shape == (5, DIMS) and outcome.vectors.dtype == np.float32
    for row, text in zip(outcome.vectors, ["b", "a", "b", "c", "a"]):
        np.testing.assert_array_equal(row, pool.backend.vector(text))
    assert outcome.cached == [False] * 5


async def test_prompt_follows_the_kind():
    service, pool = make_service(query_prompt="query: ", document_prompt="passage: ")
    await service.embed(["x"], kind=EmbedKind.QUERY)
    await service.embed(["x"], kind=EmbedKind.DOCUMENT)
    assert pool.calls == [["query: x"], ["passage: x"]]


async def test_cache_hits_skip_the_pool_and_say_cached():
    cache = FakeCache()
    service, pool = make_service(cache)
    first = await service.embed(["p", "q"])
    second = await service.embed(["q", "r", "p"])
    assert pool.calls == [["p", "q"], ["r"]]
    assert second.cached == [True, False, True]
    np.testing.assert_array_equal(second.vectors[0], first.vectors[1])
    third = await service.embed(["p"], use_cache=False)
    assert third.cached == [False] and pool.calls[-1] == ["p"]


async def test_cache_keys_separate_normalize_and_prompts():
    cache = FakeCache()
    service, pool = make_service(cache, query_prompt="query: ")
    await service.embed(["t"], normalize=True)
    await service.embed(["t"], normalize=False)
    await service.embed(["t"], kind=EmbedKind.QUERY)
    assert (await service.embed(["t"], kind=EmbedKind.DOCUMENT)).cached == [True]
    assert len(pool.calls) == 3


async def test_pool_bad_input_is_reported_at_the_callers_index():
    service, pool = make_service()
    pool.error = BadInput("text 1 has 900 tokens; model m accepts at most 256", index=1, tokens=900)
    with pytest.raises(BadInput) as error:
        await service.embed(["a", "a", "long one"])  # the pool sees ["a", "long one"]
    assert error.value.extensions["index"] == 2
    assert error.value.message.startswith("text 2 has 900 tokens")


async def test_unready_model_is_model_unavailable():
    service, pool = make_service()
    with pytest.raises(ModelUnavailable):
        await service.embed(["x"], model="BAAI/bge-small-en-v1.5")
    assert pool.calls == []


class ModelsThatRecord(FakeModels):
    """What the service let the caller's request do: start a download, or not."""

    async def ready_spec(self, name, wait=False, *, may_download=True):
        self.may_download = may_download
        return await super().ready_spec(name, wait)


READER = Principal(kind="key", name="reader", scopes=frozenset({Scope.READ}), collections=frozenset({"nothing"}))
WRITER = Principal(kind="key", name="writer", scopes=frozenset({Scope.READ, Scope.WRITE}))
ADMIN = Principal(kind="key", name="admin", scopes=frozenset({Scope.ADMIN}))


@pytest.mark.parametrize(
    ("principal", "keys_required", "on_demand", "may_download"),
    [
        (READER, True, False, False),
        (WRITER, True, False, False),
        (ADMIN, True, False, True),
        (READER, True, True, True),
        (READER, False, False, True),  # without keys required, the same caller could omit its key
        (ANONYMOUS, False, False, True),
    ],
    ids=["read-key", "write-key", "admin-key", "read-key-on-demand", "read-key-no-keys-mode", "anonymous"],
)
async def test_only_admins_start_downloads_unless_on_demand_or_keys_are_not_required(
    principal, keys_required, on_demand, may_download
):
    service, _ = make_service()
    service.settings.auth = service.settings.auth.model_copy(update={"required": keys_required})
    service.settings.downloads = service.settings.downloads.model_copy(update={"on_demand": on_demand})
    models = service.models = ModelsThatRecord(service.models.spec)
    await service.embed(["x"], principal=principal)
    assert models.may_download is may_download
