"""Mutation resolvers."""

from __future__ import annotations

from typing import Optional

import strawberry

from app.graphql import types as t
from app.graphql.context import Context
from app.graphql.convert import collection_to_gql, model_to_gql

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
        layout: Optional[t.CollectionLayoutInput] = None,
    ) -> t.Collection:
        overrides = None
        if layout is not None:
            overrides = {k: v for k, v in vars(layout).items() if v is not None}
            if layout.quantization is not None:
                overrides["quantization"] = layout.quantization.value
        row = await info.context.services.collections.create(
            name,
            model=model,
            distance=(distance or t.Distance.COSINE).value,
            indexed_fields=indexed_fields or [],
            layout=overrides,
        )
        return collection_to_gql(row)

    @strawberry.mutation
    async def delete_collection(self, info: Info, name: str) -> bool:
        return await info.context.services.collections.delete(name)

    @strawberry.mutation
    async def ingest(self, info: Info, collection: str, documents: list[t.DocumentInput]) -> t.IngestResult:
        payload = [
            {
                "id": None if d.id is None else str(d.id),
                "text": d.text,
                "metadata": d.metadata,
                "vector": d.vector,
                "vector_base64": d.vector_base64,
            }
            for d in documents
        ]
        report = await info.context.services.ingest.ingest(collection, payload)
        return t.IngestResult(
            ids=[strawberry.ID(i) for i in report.ids],
            inserted=report.inserted,
            updated=report.updated,
            unchanged=report.unchanged,
            failed=report.failed,
            errors=[
                t.IngestError(
                    index=e.index,
                    id=None if e.id is None else strawberry.ID(e.id),
                    code=e.code,
                    message=e.message,
                )
                for e in report.errors
            ],
        )

    @strawberry.mutation(description="How many documents were removed.")
    async def delete_documents(self, info: Info, collection: str, ids: list[strawberry.ID]) -> int:
        return await info.context.services.ingest.delete_documents(collection, [str(i) for i in ids])

    @strawberry.mutation(description="Starts a download, or joins the one under way.")
    async def download_model(self, info: Info, name: str) -> t.Model:
        manager = info.context.services.models
        status = manager.download(name)
        return model_to_gql(status, manager.effective_default)
