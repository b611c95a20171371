"""DataLoaders: one query for all documents (or counts) a response needs, through the services
so every grant and tenant filter applies."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any, Callable, Sequence

from strawberry.dataloader import DataLoader

from app.domain.access import Principal
from app.domain.scans import ScanBudget
from app.errors import NotFound

if TYPE_CHECKING:  # the rows come through DocumentService; only their type is named here
    from app.adapters.postgres_rows import DocumentRow

DocumentKey = tuple[str, str]  # (collection, document id)


def document_loader(documents: Any, principal: Callable[[], Principal]) -> DataLoader[DocumentKey, DocumentRow]:
    """The stored rows (converted by the field that shows them: a search primes this loader with
    every hit's row, and most searches never select `document`)."""

    async def load(keys: Sequence[DocumentKey]) -> list[DocumentRow | NotFound]:
        by_collection: dict[str, list[str]] = defaultdict(list)
        for collection, doc_id in keys:
            by_collection[collection].append(doc_id)
        found: dict[DocumentKey, DocumentRow] = {}
        for collection, ids in by_collection.items():
            rows = await documents.get_documents(collection, ids, principal=principal())
            for doc_id, row in zip(ids, rows):
                if row is not None:
                    found[(collection, doc_id)] = row
        return [
            found.get(key) or NotFound(f"document {key[1]!r} not found in collection {key[0]!r}")
            for key in keys
        ]

    return DataLoader(load_fn=load)


def count_loader(documents: Any, principal: Callable[[], Principal], budget: Callable[[], ScanBudget]) -> DataLoader:
    """documentCount of every collection in a response in one query (a tenant's counts are
    charged to the request's scan budget)."""

    async def load(names: Sequence[str]) -> list[Any]:
        return list(await documents.document_counts(list(names), principal=principal(), budget=budget()))

    return DataLoader(load_fn=load)
