"""DataLoaders: one query for all documents (or counts) a response needs, through the services
so every grant and tenant filter applies."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Sequence

from strawberry.dataloader import DataLoader

from app.domain.access import Principal
from app.domain.scans import ScanBudget
from app.errors import NotFound
from app.graphql.convert import document_to_gql


def document_loader(documents: Any, principal: Callable[[], Principal]) -> DataLoader:
    async def load(keys: Sequence[tuple[str, str]]) -> list[Any]:
        by_collection: dict[str, list[str]] = defaultdict(list)
        for collection, doc_id in keys:
            by_collection[collection].append(doc_id)
        found: dict[tuple[str, str], Any] = {}
        for collection, ids in by_collection.items():
            rows = await documents.get_documents(collection, ids, principal=principal())
            for doc_id, row in zip(ids, rows):
                if row is not None:
                    found[(collection, doc_id)] = document_to_gql(row)
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
