"""Mutation resolvers."""

from __future__ import annotations

from typing import Optional

import strawberry

from app.graphql import types as t
from app.graphql.context import Context
from app.domain.chunking import Chunking
from app.graphql.convert import collection_to_gql, ingest_error_to_gql, model_to_gql

Info = strawberry.Info[Context, None]


@strawberry.type
class Mutation:
    @strawberry.mutation
    async def create_collection(
        self,
        info: Info,
        name: str,
        model: Optional[str] = None,
        distance: Optional[t.Distance] = t.Distance.COSINE,
        indexed_fields: Optional[list[str]] = None,
        chunking: Optional[t.ChunkingInput] = None,
        keyword_index: Optional[bool] = True,
    ) -> t.Collection:
        row = await info.context.services.collections.create(
            name,
            model=model,
            distance=(distance or t.Distance.COSINE).value,
            indexed_fields=indexed_fields or [],
            keyword_index=keyword_index is not False,
            chunking=Chunking(chunking.max_tokens, chunking.overlap_tokens or 0) if chunking else None,
        )
        return collection_to_gql(row)

    @strawberry.mutation
    async def delete_collection(self, info: Info, name: str) -> bool:
        return await info.context.services.collections.delete(name)

    @strawberry.mutation
    async def ingest(self, info: Info, collection: str, documents: list[t.DocumentInput]) -> t.IngestResult:
        payload = [
            {"id": None if d.id is None else str(d.id), "text": d.text, "metadata": d.metadata}
            for d in documents
        ]
        report = await info.context.services.ingest.ingest(collection, payload)
        return t.IngestResult(
            ids=[strawberry.ID(i) for i in report.ids],
            inserted=report.inserted,
            updated=report.updated,
            unchanged=report.unchanged,
            failed=report.failed,
            errors=[ingest_error_to_gql(e) for e in report.errors],
            chunks=report.chunks,
            warnings=[ingest_error_to_gql(w) for w in report.warnings],
        )

    @strawberry.mutation(description="How many documents were removed.")
    async def delete_documents(self, info: Info, collection: str, ids: list[strawberry.ID]) -> int:
        return await info.context.services.ingest.delete_documents(collection, [str(i) for i in ids])

    @strawberry.mutation(description="Starts a download, or joins the one under way.")
    async def download_model(self, info: Info, name: str) -> t.Model:
        manager = info.context.services.models
        status = manager.download(name)
        return model_to_gql(status, manager.effective_default)
