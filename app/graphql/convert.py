"""Turn service-layer rows and results into GraphQL objects, in one place."""

from __future__ import annotations

import dataclasses

from typing import Any

import strawberry

from app.domain.aggregation import SortKey
from app.domain.models import DownloadEvent, ModelStatus
from app.graphql import types as t


def document_to_gql(row: Any) -> t.Document:
    return t.Document(
        id=strawberry.ID(row.id),
        collection=row.collection,
        text=row.text,
        metadata=row.metadata,
        content_hash=row.content_hash,
        created_at=row.created_at,
        updated_at=row.updated_at,
        indexed=row.status == "indexed",
    )


def collection_to_gql(row: Any) -> t.Collection:
    return t.Collection(
        name=row.name,
        model=row.model,
        model_revision=row.model_revision,
        dimensions=row.dimensions,
        distance=t.Distance(row.distance),
        indexed_fields=list(row.indexed_fields),
        created_at=row.created_at,
        keyword_index=row.keyword_index != "none",
        chunking=t.Chunking(max_tokens=row.chunk_max_tokens, overlap_tokens=row.chunk_overlap_tokens)
        if row.chunk_max_tokens
        else None,
        row=row,
    )


def hit_to_gql(hit: Any, collection: str) -> t.SearchHit:
    chunk = hit.chunk
    return t.SearchHit(
        id=strawberry.ID(hit.id),
        score=hit.score,
        text=hit.text,
        metadata=hit.metadata,
        collection_name=collection,
        mode=hit.mode,
        chunk=t.Chunk(index=chunk.index, text=chunk.text, start=chunk.start, end=chunk.end) if chunk else None,
    )


def ingest_error_to_gql(e: Any) -> t.IngestError:
    return t.IngestError(index=e.index, id=None if e.id is None else strawberry.ID(e.id), code=e.code, message=e.message)


def same_named(source: Any, target: Any, **given: Any) -> Any:
    """A `target` (a Strawberry type) from `source`'s attributes of the same names, and `given`
    for the fields that differ: a projection is written once, by its fields' names."""
    values = {f.name: given[f.name] if f.name in given else getattr(source, f.name) for f in dataclasses.fields(target) if f.init}
    return target(**values)


def model_to_gql(status: ModelStatus, default_name: str | None, replicas: list[ModelStatus]) -> t.Model:
    """`status` is this replica's truth; `replicas` the cluster's view (this one included)."""
    return same_named(
        status, t.Model, is_default=status.name == default_name, replicas=[replica_to_gql(r) for r in replicas]
    )


def replica_to_gql(status: ModelStatus) -> t.ModelReplica:
    return same_named(status, t.ModelReplica)


def event_to_gql(event: DownloadEvent) -> t.DownloadEvent:
    return same_named(event, t.DownloadEvent)


def api_key_to_gql(row: Any) -> t.ApiKey:
    return same_named(
        row,
        t.ApiKey,
        id=strawberry.ID(row.id),
        scopes=[t.Scope(s) for s in row.scopes],
        collections=None if row.collections is None else list(row.collections),
    )


def field_stats_to_gql(summary: Any) -> t.FieldStats:
    return t.FieldStats(
        field=summary.field,
        count=summary.count,
        min=summary.min,
        max=summary.max,
        mean=summary.mean,
        sum=summary.sum,
        ranked=summary.top,
    )


def aggregate_to_gql(outcome: Any) -> t.AggregateResult:
    groups = None
    if outcome.groups is not None:
        groups = [
            t.AggregateGroup(value=g.value, count=g.count, fields=[field_stats_to_gql(f) for f in g.fields])
            for g in outcome.groups
        ]
    return t.AggregateResult(
        count=outcome.count,
        fields=[field_stats_to_gql(f) for f in outcome.fields],
        groups=groups,
        group_count=outcome.group_count,
    )


def sort_keys(sort: Any) -> list[SortKey]:
    """GraphQL SortInputs as the domain's sort keys (order null means ASC)."""
    return [SortKey(field=s.field, descending=s.order == t.SortOrder.DESC) for s in sort or []]
