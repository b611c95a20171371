"""What is gRPC's own in a message (enums, JSON text, optional fields) into the arguments of a
typed request (app/requests.py checks them), and service outcomes back into messages. No service
is called here."""

from __future__ import annotations

from typing import Any

from app.domain.embedding import EmbedKind
from app.domain.models import DownloadEvent
from app.domain.vectors import Fusion, SearchMode
from app.errors import BadInput
from app.grpc.citadel.v1 import citadel_pb2 as pb
from app.requests import DEFAULT_RERANK_CANDIDATES, GroupBy, Recommend, SearchRerank
from app.validation import check_name, check_value
from app.web.json_codec import dumps_str, loads

_EMBED_KINDS = {pb.EMBED_KIND_UNSPECIFIED: EmbedKind.DOCUMENT, pb.EMBED_KIND_DOCUMENT: EmbedKind.DOCUMENT, pb.EMBED_KIND_QUERY: EmbedKind.QUERY}
_FUSIONS = {pb.FUSION_UNSPECIFIED: Fusion.RRF, pb.FUSION_RRF: Fusion.RRF, pb.FUSION_DBSF: Fusion.DBSF}
_SEARCH_MODES = {
    pb.SEARCH_MODE_UNSPECIFIED: SearchMode.SEMANTIC,
    pb.SEARCH_MODE_SEMANTIC: SearchMode.SEMANTIC,
    pb.SEARCH_MODE_KEYWORD: SearchMode.KEYWORD,
    pb.SEARCH_MODE_HYBRID: SearchMode.HYBRID,
}


def optional(message: Any, field: str) -> Any:
    """A proto3 `optional` field's value, None where the message leaves it out."""
    return getattr(message, field) if message.HasField(field) else None


def optional_name(message: Any, field: str) -> str | None:
    return None if (value := optional(message, field)) is None else check_name(value, field)


def json_argument(text: str, argument: str, max_chars: int) -> Any:
    """JSON text (GraphQL's JSON scalar, as a string): empty is none; malformed is BAD_INPUT."""
    if not text:
        return None
    try:
        value = loads(text)
    except ValueError as exc:  # orjson's error is a ValueError; it also refuses nesting past 1024
        raise BadInput(f"{argument} is not JSON: {exc}", argument=argument) from None
    check_value(value, argument, max_chars)
    return value


def embed_kind(value: int) -> EmbedKind:
    try:
        return _EMBED_KINDS[value]
    except KeyError:
        raise BadInput(f"kind {value} is not an EmbedKind", argument="kind") from None


def search_mode(value: int) -> SearchMode:
    try:
        return _SEARCH_MODES[value]
    except KeyError:
        raise BadInput(f"mode {value} is not a SearchMode", argument="mode") from None


def fusion(value: int) -> Fusion:
    try:
        return _FUSIONS[value]
    except KeyError:
        raise BadInput(f"fusion {value} is not a Fusion", argument="fusion") from None


def recommend(request: pb.SearchRequest) -> Recommend | None:
    if not request.HasField("recommend"):
        return None
    return Recommend(tuple(request.recommend.positive), tuple(request.recommend.negative))


def group_by(request: pb.SearchRequest) -> GroupBy | None:
    if not request.HasField("group_by"):
        return None
    given = request.group_by
    groups, per_group = optional(given, "groups"), optional(given, "hits_per_group")
    return GroupBy(given.field, 10 if groups is None else groups, 1 if per_group is None else per_group)


def search_rerank(request: pb.SearchRequest) -> SearchRerank | None:
    if not request.HasField("rerank"):
        return None
    given = request.rerank
    candidates = optional(given, "candidates")
    return SearchRerank(optional(given, "model"), DEFAULT_RERANK_CANDIDATES if candidates is None else candidates)


def documents(request: pb.IngestRequest, max_chars: int) -> list[dict[str, Any]]:
    """The payload GraphQL `ingest` passes on; the service checks each document (text, id,
    metadata size) and reports the bad ones one by one."""
    return [
        {
            "id": doc.id if doc.HasField("id") else None,
            "text": doc.text,
            "metadata": json_argument(doc.metadata_json, f"documents[{i}].metadata_json", max_chars),
            "vector": None,
            "vector_base64": None,
        }
        for i, doc in enumerate(request.documents)
    ]


def embed_response(outcome: Any) -> pb.EmbedResponse:
    return pb.EmbedResponse(
        model=outcome.model,
        dimensions=outcome.dimensions,
        embeddings=[pb.Embedding(values=row.tolist(), cached=cached) for row, cached in zip(outcome.vectors, outcome.cached)],
    )


def _search_hit(hit: Any, rerank_score: float | None = None) -> pb.SearchHit:
    return pb.SearchHit(
        id=hit.id, score=hit.score, text=hit.text or "", metadata_json=dumps_str(hit.metadata or {}),
        rerank_score=rerank_score, collection=hit.collection,
    )  # fmt: skip


def search_response(outcome: Any) -> pb.SearchResponse:
    scores = outcome.rerank_scores or [None] * len(outcome.hits)
    hits = [_search_hit(hit, score) for hit, score in zip(outcome.hits, scores)]
    groups = [
        pb.SearchGroup(value_json=dumps_str(group.value), hits=[_search_hit(hit) for hit in group.hits])
        for group in outcome.groups or ()
    ]
    return pb.SearchResponse(collection=outcome.collection, model=outcome.model, hits=hits, took_ms=outcome.took_ms, groups=groups)


def collections_response(outcome: Any) -> pb.SearchCollectionsResponse:
    return pb.SearchCollectionsResponse(hits=[_search_hit(hit) for hit in outcome.hits], took_ms=outcome.took_ms)


def _ingest_error(item: Any) -> pb.IngestError:
    return pb.IngestError(index=item.index, id=item.id, code=item.code, message=item.message)


def ingest_response(report: Any) -> pb.IngestResponse:
    return pb.IngestResponse(
        ids=report.ids,
        inserted=report.inserted,
        updated=report.updated,
        unchanged=report.unchanged,
        failed=report.failed,
        errors=[_ingest_error(e) for e in report.errors],
        chunks=report.chunks,
        warnings=[_ingest_error(w) for w in report.warnings],
    )


def rerank_response(outcome: Any, return_text: bool) -> pb.RerankResponse:
    hits = [pb.RerankHit(index=h.index, score=h.score, text=h.text if return_text else None) for h in outcome.hits]
    return pb.RerankResponse(model=outcome.model, hits=hits, took_ms=outcome.took_ms)


def same_named(source: Any, message: Any, **given: Any) -> Any:
    """A `message` (a protobuf class) from `source`'s attributes of the same names, and `given` for
    the fields that differ (app/graphql/convert.same_named is the same for GraphQL types)."""
    values = {f.name: given[f.name] if f.name in given else getattr(source, f.name) for f in message.DESCRIPTOR.fields}
    return message(**values)


def download_event(event: DownloadEvent) -> pb.DownloadEvent:
    return same_named(
        event, pb.DownloadEvent, state=pb.ModelState.Value(f"MODEL_STATE_{event.state.value}"), at=event.at.isoformat()
    )
