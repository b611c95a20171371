"""Mutation resolvers."""

from __future__ import annotations

from typing import Annotated, Optional

import strawberry

from app.graphql import jobs as job_fields
from app.graphql import types as t
from app.graphql.context import Context
from app.domain.chunking import Chunking
from app.graphql.convert import api_key_to_gql, collection_to_gql, ingest_error_to_gql, model_to_gql
from app.requests import IngestBatch
from app.services.keys import KeyRequest

Info = strawberry.Info[Context, None]


@strawberry.type(description="Writes: collections, documents, model downloads and API keys")
class Mutation:
    @strawberry.mutation(description="A new collection (ADMIN); its model and dimensions are fixed for its life.")
    async def create_collection(
        self,
        info: Info,
        name: Annotated[str, strawberry.argument(description="Unique name (at most 256 characters)")],
        model: Annotated[
            Optional[str], strawberry.argument(description="A catalog model's name; null: the default model (or its fallback)")
        ] = None,
        distance: Annotated[Optional[t.Distance], strawberry.argument(description="How vectors are compared")] = t.Distance.COSINE,
        indexed_fields: Annotated[
            Optional[list[str]],
            strawberry.argument(
                description='Metadata fields to index for filters and facets: "topic" (keyword) or typed "n:integer", '
                '"price:float", "draft:bool", "published:datetime"'
            ),
        ] = None,
        chunking: Annotated[
            Optional[t.ChunkingInput], strawberry.argument(description="Split documents into chunks; null: one vector per document")
        ] = None,
        keyword_index: Annotated[
            Optional[bool], strawberry.argument(description="Keep BM25 vectors for KEYWORD and HYBRID search")
        ] = True,
        layout: Annotated[
            Optional[t.CollectionLayoutInput],
            strawberry.argument(description="Shards, replicas, on-disk storage and quantization; null: the CITADEL_VECTORS__* defaults"),
        ] = None,
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
            keyword_index=keyword_index is not False,
            chunking=Chunking(chunking.max_tokens, chunking.overlap_tokens or 0) if chunking else None,
            principal=info.context.principal,
        )
        return collection_to_gql(row)

    @strawberry.mutation(description="Delete a collection and its documents (ADMIN); false when there was none.")
    async def delete_collection(
        self, info: Info, name: Annotated[str, strawberry.argument(description="The collection's name")]
    ) -> bool:
        return await info.context.services.collections.delete(name, principal=info.context.principal)

    @strawberry.mutation(
        description="Store and index documents (WRITE): new ids are inserted, known ones updated, unchanged ones skipped; "
        "each document fails on its own (errors)."
    )
    async def ingest(
        self,
        info: Info,
        collection: Annotated[str, strawberry.argument(description="The collection's name")],
        documents: Annotated[
            list[t.DocumentInput],
            strawberry.argument(description="At most CITADEL_LIMITS__MAX_DOCUMENTS_PER_INGEST (256) documents"),
        ],
    ) -> t.IngestResult:
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
        services = info.context.services
        batch = IngestBatch.parse(collection, payload, services.settings.limits)
        report = await services.ingest.run(batch, principal=info.context.principal)
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

    ingest_files = strawberry.mutation(
        resolver=job_fields.ingest_files,
        description="Upload files (a multipart request, the GraphQL multipart request spec; WRITE) and ingest them in a "
        "background job: text, Markdown, HTML and PDF files become one document each, JSON Lines files one per line.",
    )
    start_ingest_job = strawberry.mutation(
        resolver=job_fields.start_ingest_job,
        description="Ingest any number of documents in a background job (WRITE), batch by batch through the same path "
        "as `ingest`; follow it with `job` or `jobProgress`.",
    )
    reindex_collection = strawberry.mutation(
        resolver=job_fields.reindex_collection,
        description="Move a collection to another embedding model (and chunking) with zero downtime (ADMIN): a REINDEX job "
        "builds the new version from the stored documents while searches read the current one and writes reach both, "
        "then switches atomically; `Collection.model` names the new model after it and the previous version is removed.",
    )
    cancel_job = strawberry.mutation(
        resolver=job_fields.cancel_job,
        description="Stop a QUEUED or RUNNING job within seconds (WRITE on its collection; the key that started it, or "
        "ADMIN); committed batches stay. A job already CANCELLED is returned as it is.",
    )

    @strawberry.mutation(description="How many documents were removed.")
    async def delete_documents(
        self,
        info: Info,
        collection: Annotated[str, strawberry.argument(description="The collection's name")],
        ids: Annotated[list[strawberry.ID], strawberry.argument(description="Ids of the documents to delete")],
    ) -> int:
        return await info.context.services.ingest.delete_documents(
            collection, [str(i) for i in ids], principal=info.context.principal
        )

    @strawberry.mutation(description="Starts a download, or joins the one under way.")
    async def download_model(
        self, info: Info, name: Annotated[str, strawberry.argument(description="A catalog model's name")]
    ) -> t.Model:
        catalog = info.context.services.catalog
        status = catalog.download(name, info.context.principal)
        return model_to_gql(status, catalog.effective_default, catalog.replicas_of(status.name, info.context.principal))

    @strawberry.mutation(description="A new API key (ADMIN); its secret is in the answer and nowhere else.")
    async def create_api_key(
        self, info: Info, input: Annotated[t.ApiKeyInput, strawberry.argument(description="The new key")]
    ) -> t.CreatedApiKey:
        request = KeyRequest(
            name=input.name,
            scopes=[s.value for s in input.scopes],
            collections=input.collections,
            filter=input.filter,
            rate_per_second=input.rate_per_second,
        )
        row, secret = await info.context.services.keys.create(request, info.context.principal)
        return t.CreatedApiKey(key=api_key_to_gql(row), secret=secret)

    @strawberry.mutation(description="Revoke a key at once (ADMIN); false when it was already revoked.")
    async def revoke_api_key(
        self, info: Info, id: Annotated[strawberry.ID, strawberry.argument(description="The key's id (not its secret)")]
    ) -> bool:
        return await info.context.services.keys.revoke(str(id), info.context.principal)
