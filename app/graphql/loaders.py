"""DataLoaders: one PostgreSQL query for all documents a response needs."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

from strawberry.dataloader import DataLoader

from app.errors import NotFound
from app.graphql.convert import document_to_gql


def document_loader(repo: Any) -> DataLoader:
    async def load(keys: Sequence[tuple[str, str]]) -> list[Any]:
        by_collection: dict[str, list[str]] = defaultdict(list)
        for collection, doc_id in keys:
            by_collection[collection].append(doc_id)
        found: dict[tuple[str, str], Any] = {}
        for collection, ids in by_collection.items():
            rows = await repo.get_documents(collection, ids)
            for doc_id, row in zip(ids, rows):
                if row is not None:
                    found[(collection, doc_id)] = document_to_gql(row)
        return [
            found.get(key) or NotFound(f"document {key[1]!r} not found in collection {key[0]!r}")
            for key in keys
        ]

    return DataLoader(load_fn=load)
