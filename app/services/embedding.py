"""embed(): validation, prompts, the Redis cache, de-duplication, and the model pool.

Flow: validate -> READY spec -> cache MGET -> misses de-duplicated -> pool.encode (dynamic
batching), in slices the queue admits -> cache pipeline SET -> vectors in input order.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from app.adapters.redis_cache import EmbeddingCache
from app.domain.access import INTERNAL, Principal, Scope
from app.domain.embedding import EmbedKind, Tokenized
from app.errors import BadInput, CitadelError
from app.inference import metrics
from app.inference.callers import Share, fair_key_of
from app.inference.pool import ModelPool
from app.domain.models import ModelSpec
from app.requests import EmbedRequest
from app.settings import Settings


@dataclass
class EmbedOutcome:
    model: str
    dimensions: int
    vectors: np.ndarray  # float32 (len(texts), dimensions), rows in input order
    cached: list[bool]
    tokens: list[int] | None = None  # per text, what the model reads (capped at its window); when asked


@dataclass(frozen=True)
class DocumentTokens:
    spans: list[list[tuple[int, int]]]  # per text: its tokens' character offsets, special tokens left out
    window: int  # the tokens of one document (or chunk) the model embeds
    tokens: Tokenized | None  # per text: what embedding it whole reads (None where a prompt comes first)


class ReadyModels(Protocol):
    async def ready_spec(self, name: str | None, wait: bool = False, *, may_download: bool = True) -> ModelSpec:
        """The spec of a READY model (None = the default model), else ModelUnavailable;
        with wait, first wait for a download under way. Without may_download, a model that
        would have to be fetched from the hub (other than the default) is not: ModelUnavailable."""
        ...


class EmbeddingService:
    def __init__(
        self, settings: Settings, pool: ModelPool, cache: EmbeddingCache | None, models: ReadyModels
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.cache = cache
        self.models = models

    async def embed(
        self,
        texts: Sequence[str],
        model: str | None = None,
        kind: EmbedKind = EmbedKind.DOCUMENT,
        normalize: bool = True,
        use_cache: bool = True,
        wait: bool = False,
        count_tokens: bool = False,
        *,
        principal: Principal = INTERNAL,
        wait_for_room: bool = False,
        max_texts: int | None = None,
    ) -> EmbedOutcome:
        """run() of these arguments, checked (EmbedRequest.parse): for callers inside the server."""
        request = EmbedRequest.parse(
            texts, self.settings.limits, model=model, kind=kind, normalize=normalize, wait=wait,
            count_tokens=count_tokens, max_texts=max_texts,
        )  # fmt: skip
        return await self.run(request, principal=principal, use_cache=use_cache, wait_for_room=wait_for_room)

    async def run(
        self, request: EmbedRequest, *, principal: Principal = INTERNAL, use_cache: bool = True, wait_for_room: bool = False
    ) -> EmbedOutcome:
        """The embed operation. wait_for_room: bulk work (ingest, the reconciler) waits while the
        model's queue or the caller's share of it is full, instead of OVERLOADED (ModelPool.encode).
        More texts than one slice (slice_size) go to the model slice by slice: the first is
        admitted as any call is, the rest wait for room in the caller's share of the queue, so a
        big request is never refused for its own texts and never holds more of the queue than any
        caller may."""
        principal.require(Scope.READ)
        started = time.perf_counter()
        model = request.model
        # Label by catalog name only: a client-chosen string must not mint new time series.
        label = model or self.settings.default_model
        label = label if label in self.settings.models else "unknown"
        outcome = "ok"
        try:
            if self.settings.model(model).is_reranker:
                raise BadInput(f"model {model!r} is a reranker: use rerank, not embed", argument="model", param="model")
            spec = await self.models.ready_spec(model, wait=request.wait, may_download=self.may_download(principal))
            share = Share(fair_key_of(principal), waits=wait_for_room)
            return await self._embed(spec, request, use_cache, share)
        except CitadelError as exc:
            outcome = exc.code
            raise
        except Exception:
            outcome = "INTERNAL"
            raise
        finally:
            metrics.EMBED_REQUESTS.labels(label, outcome).inc()
            metrics.EMBED_DURATION.labels(label).observe(time.perf_counter() - started)

    def may_download(self, principal: Principal) -> bool:
        """Whether the caller's embed may make the server fetch a model from the hub: an ADMIN key,
        every caller while keys are not required (any of them may call without its key), and any
        key where CITADEL_DOWNLOADS__ON_DEMAND allows it. Other keys could otherwise fill the disk
        and the network with every model of the catalog."""
        settings = self.settings
        return principal.is_admin or not settings.auth_required or settings.downloads.on_demand

    async def document_tokens(self, model: str, texts: Sequence[str]) -> DocumentTokens:
        """Each text's token offsets in `model`'s tokenizer, its window for document text (the
        tokens of a document that are embedded: max_seq_length less special and prompt tokens),
        and, where the model has no document prompt, the texts' tokens as embedding them reads
        them (EmbedRequest.tokens: a document embedded whole is not tokenized again)."""
        spec = await self.models.ready_spec(model)
        prompt = spec.document_prompt
        spans, specials, max_length, tokens = await self.pool.token_spans(spec.name, [*texts, prompt] if prompt else list(texts))
        prompt_tokens = len(spans.pop()) if prompt else 0
        window = max(1, max_length - specials - prompt_tokens)
        return DocumentTokens(spans, window, None if prompt else tokens)

    async def _embed(self, spec: ModelSpec, request: EmbedRequest, use_cache: bool, share: Share = Share()) -> EmbedOutcome:
        texts, normalize = request.texts, request.normalize
        dims = spec.dimensions
        prompt = spec.query_prompt if request.kind is EmbedKind.QUERY else spec.document_prompt
        vectors = np.empty((len(texts), dims), dtype=np.float32)
        cached = [False] * len(texts)
        # Counted once: where the caller brought the tokens, or here when it wants usage; the pool
        # then reuses the misses' tokens.
        tokenized = request.tokens
        if tokenized is None and request.count_tokens:
            tokenized = await self.pool.tokenize(spec.name, [prompt + text for text in texts])
        counts = tokenized.counts if tokenized is not None and request.count_tokens else None

        cache = self.cache if (use_cache and self.cache is not None and self.settings.cache.enabled) else None
        keys: list[str] = []
        if cache is not None:
            keys = cache.keys(f"{spec.name}#{spec.backend}", model_revision(spec), prompt, normalize, texts)
            for index, hit in enumerate(await cache.get_many(keys)):
                if hit is not None and hit.shape == (dims,):  # a stale entry of another width is a miss
                    vectors[index] = hit
                    cached[index] = True
            hits = sum(cached)
            metrics.CACHE_HITS.labels(spec.name).inc(hits)
            metrics.CACHE_MISSES.labels(spec.name).inc(len(texts) - hits)

        # Each distinct missing text is embedded once, however often it repeats.
        todo: dict[str, list[int]] = {}
        for index, text in enumerate(texts):
            if not cached[index]:
                todo.setdefault(text, []).append(index)
        if todo:
            unique = list(todo)
            unique_tokens = tokenized.pick([todo[text][0] for text in unique]) if tokenized is not None else None
            computed = await self._encode(spec, prompt, unique, normalize, todo, unique_tokens, share)
            for text, row in zip(unique, computed):
                vectors[todo[text]] = row
            if cache is not None:
                await cache.set_many({keys[todo[text][0]]: row for text, row in zip(unique, computed)})
        tokens = [min(count, spec.max_seq_length) for count in counts] if counts is not None else None
        return EmbedOutcome(model=spec.name, dimensions=dims, vectors=vectors, cached=cached, tokens=tokens)

    async def _encode(
        self,
        spec: ModelSpec,
        prompt: str,
        unique: list[str],
        normalize: bool,
        todo: dict[str, list[int]],
        tokens: Tokenized | None,
        share: Share = Share(),
    ) -> np.ndarray:
        """The vectors of `unique`, slice by slice (slice_size): the first slice is admitted as the
        caller's share says (OVERLOADED at once where the queue has no room for it, unless the
        share waits); once it is answered, the others are queued together, each waiting for room,
        so the caller never holds more of the queue than its share (max_queue_per_key) and other
        callers are served beside it by the fair queue."""
        texts = [prompt + text for text in unique]
        size = slice_size(self.settings)

        async def encode(start: int, waits: bool) -> np.ndarray:
            part = texts[start : start + size]
            part_tokens = tokens.pick(range(start, start + len(part))) if tokens is not None else None
            try:
                return await self.pool.encode(
                    spec.name, part, normalize, part_tokens, share.fair_key, wait_for_room=waits
                )
            except BadInput as exc:
                position = exc.extensions.get("index")
                if not isinstance(position, int):
                    raise
                # The pool saw a slice of de-duplicated texts; name the caller's index instead.
                index = todo[unique[start + position]][0]
                extensions = {**exc.extensions, "index": index}
                message = exc.message.replace(f"text {position} ", f"text {index} ", 1)
                raise BadInput(message, **extensions) from exc

        first = await encode(0, share.waits)
        if len(texts) <= size:
            return first
        rest = [asyncio.ensure_future(encode(start, True)) for start in range(size, len(texts), size)]
        try:
            parts = await asyncio.gather(*rest)
        except BaseException:  # one slice failed, or the caller left: the others are not computed for nobody
            for task in rest:
                task.cancel()
            await asyncio.wait(rest)
            for task in rest:
                if not task.cancelled():
                    task.exception()  # retrieved: the first error is the one raised
            raise
        return np.concatenate([first, *parts])


def slice_size(settings: Settings) -> int:
    """Most texts one pool.encode call gets: within one embed call's limit, and small enough that
    the queue admits it (max_queue_per_key, max_queue), waiting if need be."""
    inference = settings.inference
    return max(1, min(settings.limits.max_texts_per_request, inference.max_queue_per_key, inference.max_queue))


@functools.lru_cache(maxsize=64)
def _package_version(package: str) -> str:
    try:
        return importlib.metadata.version(package.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def model_revision(spec: ModelSpec) -> str:
    """What identifies the model's weights in cache keys: a new package version is a new model."""
    if spec.package:
        return f"{spec.package}=={_package_version(spec.package)}"
    return spec.revision
