"""Collections: a PostgreSQL row (the truth) plus a vector-store collection of the same name
(after a reindexCollection, the store collection its row names: app/services/reindex.py).

A collection is bound at creation to one model name and revision; its vectors have that
model's dimensions and the chosen distance.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from loguru import logger

from app.domain.access import INTERNAL, Principal, Scope
from app.domain.chunking import Chunking, check_chunking
from app.domain.filters import parse_indexed_field
from app.domain.vectors import CollectionLayout, Distance, VectorIndexStatus
from app.errors import BadInput, CitadelError, DependencyUnavailable, ModelUnavailable, NotFound
from app.services.audit import audit
from app.services.embedding import model_revision
from app.domain.models import ModelSpec
from app.settings import Settings

NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
MAX_INDEXED_FIELDS = 32
T = TypeVar("T")


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise BadInput(
            f"invalid collection name {name!r}: 1-63 characters, a letter first, then letters, digits, '_' or '-'",
            field="name",
        )
    return name


def validate_distance(distance: str) -> str:
    value = str(getattr(distance, "value", distance)).lower()
    choices = [d.value for d in Distance]
    if value not in choices:
        raise BadInput(f"unknown distance {distance!r}; one of: {', '.join(choices)}", field="distance")
    return value


def validate_indexed_fields(fields: Sequence[str] | None) -> list[str]:
    """Each entry is "FIELD" or "FIELD:TYPE" (app.domain.filters); one index per field."""
    unique: dict[str, str] = {}
    for spec in fields or ():
        if not isinstance(spec, str):
            raise BadInput(f"indexedFields: expected strings, got {spec!r}", field="indexedFields")
        parsed = parse_indexed_field(spec)
        if parsed.field in unique and unique[parsed.field] != spec:
            raise BadInput(f"indexedFields: {parsed.field!r} is listed with two types", field="indexedFields")
        unique[parsed.field] = spec
    if len(unique) > MAX_INDEXED_FIELDS:
        raise BadInput(f"at most {MAX_INDEXED_FIELDS} indexed fields", field="indexedFields")
    return list(unique.values())


async def on_current_version(repo: Any, name: str, read: Callable[[Any], Awaitable[T]]) -> T:
    """`read` on the collection's current version. A reindex's switch retires the version a read
    began on (after CITADEL_INGEST__REINDEX_RETIRE_SECONDS); a read that outlives that finds its
    store collection gone (NOT_FOUND) and runs once more on the version that replaced it."""
    row = await repo.require_collection(name)
    try:
        return await read(row)
    except NotFound:
        fresh = await repo.get_collection(name)
        if fresh is None or fresh.store_name == row.store_name:
            raise
        logger.info("a read of {} began on version {}, retired since: read again on {}", name, row.store_name, fresh.store_name)
        return await read(fresh)


async def bound_model(models: Any, collection: Any) -> ModelSpec:
    """The spec of a collection's model, READY, and still the revision the collection was built with
    (the package version for packaged models, else the hub revision).

    A collection never switches models: anything else is MODEL_UNAVAILABLE.
    """
    spec: ModelSpec = await models.ready_spec(collection.model)
    if spec.name != collection.model:
        raise ModelUnavailable(
            f"model {collection.model!r} of collection {collection.name!r} is not available (only {spec.name!r} is)",
            model=collection.model,
        )
    revision = model_revision(spec)
    if revision != collection.model_revision or spec.dimensions != collection.dimensions:
        raise ModelUnavailable(
            f"collection {collection.name!r} was built with {collection.model!r} revision "
            f"{collection.model_revision!r} ({collection.dimensions} dimensions); the catalog now has "
            f"revision {revision!r} ({spec.dimensions} dimensions)",
            model=collection.model,
        )
    return spec


class CollectionService:
    def __init__(self, settings: Settings, repo: Any, store: Any, models: Any) -> None:
        self.settings = settings
        self.repo = repo
        self.store = store
        self.models = models

    async def create(
        self,
        name: str,
        model: str | None = None,
        distance: str = "cosine",
        indexed_fields: Sequence[str] | None = None,
        keyword_index: bool = True,
        chunking: Chunking | None = None,
        layout: Mapping[str, Any] | None = None,
        *,
        principal: Principal = INTERNAL,
    ) -> Any:
        """layout: CollectionLayout fields to override the settings' defaults (None values ignored)."""
        validate_name(name)
        principal.require(Scope.ADMIN, name)
        distance = validate_distance(distance)
        fields = validate_indexed_fields(indexed_fields)
        if not isinstance(keyword_index, bool):
            raise BadInput("keywordIndex must be true or false", field="keywordIndex")
        chosen = self._layout(layout)
        if self.settings.model(model).is_reranker:  # NOT_FOUND for a model outside the catalog
            raise BadInput(f"model {model!r} is a reranker; a collection needs an embedding model", field="model")
        spec: ModelSpec = await self.models.ready_spec(model)
        if model and spec.name != model:
            # Binding a collection to a fallback would silently change what its vectors mean.
            raise ModelUnavailable(f"model {model!r} is not available (only {spec.name!r} is)", model=model)

        if chunking is not None:
            chunking = check_chunking(chunking.max_tokens, chunking.overlap_tokens, spec.max_seq_length)

        revision = model_revision(spec)
        row = await self.repo.create_collection(
            name,
            spec.name,
            revision,
            spec.dimensions,
            distance,
            fields,
            keyword_index=keyword_index,
            chunk_max_tokens=chunking.max_tokens if chunking else None,
            chunk_overlap_tokens=chunking.overlap_tokens if chunking else 0,
        )
        try:
            # PostgreSQL had no such collection, so a store collection of that name is a leftover.
            if await self.store.collection_exists(name):
                logger.warning("replacing orphaned vector collection {}", name)
                await self.store.delete_collection(name)
            await self.store.create_collection(
                name, spec.dimensions, distance, fields, keyword_index=keyword_index, layout=chosen
            )
        except BaseException as exc:  # cancellation included: nothing may half-exist
            await self._undo_create(name)
            if isinstance(exc, CitadelError) or not isinstance(exc, Exception):
                raise
            logger.warning("vector store could not create collection {}: {!r}", name, exc)
            raise DependencyUnavailable(
                f"vector store could not create collection {name!r} ({type(exc).__name__})",
                dependency=self.store.name,
            ) from exc
        logger.info(
            "created collection {} (model {} {}, {} dims, {})", name, spec.name, revision, spec.dimensions, distance
        )
        audit(principal, "created collection", name)
        return row

    def _layout(self, overrides: Mapping[str, Any] | None) -> CollectionLayout:
        defaults = self.settings.vectors
        values = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(CollectionLayout)}
        values.update({k: v for k, v in (overrides or {}).items() if v is not None and k in values})
        return CollectionLayout(**values).checked()

    async def _undo_create(self, name: str) -> None:
        # Nothing half-exists: without its vectors side, the row goes too.
        try:
            await self.repo.delete_collection(name)
        except Exception:
            logger.exception("could not remove collection row {} after a failed create", name)

    async def get(self, name: str, *, principal: Principal = INTERNAL) -> Any:
        principal.require(Scope.READ, name)
        row = await self.repo.get_collection(name)
        if row is None:
            raise NotFound(f"collection {name!r} not found", collection=name)
        return row

    async def find(self, name: str, *, principal: Principal = INTERNAL) -> Any | None:
        """The collection, or None when there is none (FORBIDDEN when it is not granted)."""
        principal.require(Scope.READ, name)
        return await self.repo.get_collection(name)

    async def list(self, *, principal: Principal = INTERNAL) -> list[Any]:
        """The collections granted to the caller (others are not even named)."""
        principal.require(Scope.READ)
        return [row for row in await self.repo.list_collections() if principal.may_see(row.name)]

    async def keyword_progress(self, row: Any) -> float | None:
        """Share of documents with a keyword vector: None without a keyword index, 1.0 when ready."""
        if row.keyword_index == "none":
            return None
        if row.keyword_index == "ready":
            return 1.0
        done, total = await self.repo.keyword_progress(row.name)
        return done / total if total else 0.0

    async def vector_index(self, row: Any) -> VectorIndexStatus:
        """The collection's ANN index: its points, how many the index serves, whether a pass runs."""
        return await self.store.vector_index(row.store_name)

    async def document_count(self, name: str) -> int:
        """For the server itself; clients count through DocumentService (grants and tenants)."""
        await self.get(name)
        return int(await self.repo.count_documents(name))

    async def delete(self, name: str, *, principal: Principal = INTERNAL) -> bool:
        principal.require(Scope.ADMIN, name)
        row = await self.get(name)
        # PostgreSQL first: once the row is gone nothing can read or write the collection, and a
        # vector collection left behind by a store failure is replaced when the name is reused.
        if not await self.repo.delete_collection(name):
            raise NotFound(f"collection {name!r} not found", collection=name)
        for store_name in sorted(row.live_stores()):  # a reindex's next version too
            try:
                await self.store.delete_collection(store_name)
            except Exception:
                logger.exception("collection {} deleted; its vector collection {} could not be removed yet", name, store_name)
        logger.info("deleted collection {}", name)
        audit(principal, "deleted collection", name)
        return True
