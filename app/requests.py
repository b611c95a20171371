"""The typed request of each operation, checked once where a transport builds it.

Every transport (GraphQL over HTTP and WebSocket, gRPC, the OpenAI, Cohere and TEI routes)
builds its operation's request with `parse`, which checks every argument against the limits
with one validator per concept (app/validation.py) and raises BadInput naming the argument. The
service runs the request (`run`) without checking it again. The dataclass constructors trust
their fields: services use them only for requests they derive from a parsed one (one collection
of a searchCollections, the candidates of a reranked search, an ingest's pieces).

What a check learns is kept: texts as tuples, enums as enums, the filter as its AST, a client's
vector as float32, each document's content hash and id.
"""

from __future__ import annotations

import base64
import binascii
import math
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.domain.embedding import EmbedKind, Tokenized
from app.domain.filters import FilterNode, check_field, parse_filter
from app.domain.ids import canonical_json, content_hash, derived_document_id
from app.domain.vectors import Fusion, SearchMode
from app.errors import BadInput
from app.settings import LimitSettings
from app.validation import MAX_NAME_CHARS, check_count, check_name, check_string, check_text, check_texts, check_vector

MAX_STORED_QUERY_DOCUMENTS = 64  # similarTo / recommend: documents whose vectors make the query
MAX_COLLECTIONS_PER_SEARCH = 32  # searchCollections
DEFAULT_RERANK_CANDIDATES = 50


# -- embed ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbedRequest:
    texts: tuple[str, ...]
    model: str | None = None  # None: the default model
    kind: EmbedKind = EmbedKind.DOCUMENT
    normalize: bool = True
    wait: bool = False  # wait for a model still downloading instead of MODEL_UNAVAILABLE
    count_tokens: bool = False  # report each text's tokens (usage)
    tokens: Tokenized | None = None  # prompt + text as the model reads it, where the caller has it: not tokenized again

    @classmethod
    def parse(
        cls,
        texts: Any,
        limits: LimitSettings,
        *,
        model: str | None = None,
        kind: EmbedKind = EmbedKind.DOCUMENT,
        normalize: bool = True,
        wait: bool = False,
        count_tokens: bool = False,
        max_texts: int | None = None,
        max_texts_setting: str | None = None,
    ) -> EmbedRequest:
        """max_texts: most texts (default limits.max_texts_per_request; POST /v1/embeddings allows
        limits.max_inputs_per_openai_request, named by max_texts_setting)."""
        most = limits.max_texts_per_request if max_texts is None else max_texts
        checked = check_texts(
            texts, "texts", "text", most, limits.max_text_chars, limits.max_request_chars, most_setting=max_texts_setting
        )
        return cls(checked, _optional_name(model, "model"), kind, normalize, wait, count_tokens)


# -- rerank -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RerankRequest:
    query: str
    documents: tuple[str, ...]
    model: str | None = None  # None: CITADEL_DEFAULT_RERANKER
    top_n: int | None = None  # None: every document
    raw_scores: bool = False
    wait: bool = False

    @classmethod
    def parse(
        cls,
        query: Any,
        documents: Any,
        limits: LimitSettings,
        *,
        model: str | None = None,
        top_n: Any = None,
        raw_scores: bool = False,
        wait: bool = False,
    ) -> RerankRequest:
        query = check_text(query, "query", limits.max_text_chars, param="query")
        documents = check_texts(
            documents, "documents", "document", limits.max_rerank_documents, limits.max_text_chars,
            limits.max_request_chars, blank=True, already=len(query), most_setting="CITADEL_LIMITS__MAX_RERANK_DOCUMENTS",
            param="documents",
        )  # fmt: skip
        if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
            raise BadInput(f"topN must be a positive integer, got {top_n!r}", argument="topN", param="top_n")
        return cls(query, documents, _optional_name(model, "model"), top_n, raw_scores, wait)


# -- search -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupBy:
    """Hits grouped by a metadata field's value: at most `groups` groups (best group first, by its
    best hit) of at most `hits_per_group` hits."""

    field: str
    groups: int = 10
    hits_per_group: int = 1


@dataclass(frozen=True)
class Recommend:
    positive: tuple[str, ...]
    negative: tuple[str, ...] = ()


@dataclass(frozen=True)
class SearchRerank:
    """search(rerank:): the top `candidates` by the search's own ranking, reordered by a reranker."""

    model: str | None = None  # None: CITADEL_DEFAULT_RERANKER
    candidates: int = DEFAULT_RERANK_CANDIDATES


@dataclass(frozen=True)
class SearchRequest:
    collection: str
    query: str | None = None
    vector: tuple[float, ...] | None = None  # finite, not all zero; its length is checked against the collection
    limit: int = 10
    offset: int = 0
    filter: FilterNode | None = None
    score_threshold: float | None = None
    mode: SearchMode = SearchMode.SEMANTIC
    fusion: Fusion = Fusion.RRF
    similar_to: str | None = None
    recommend: Recommend | None = None
    group_by: GroupBy | None = None
    diversity: float | None = None
    autocut: int | None = None
    rerank: SearchRerank | None = None

    @property
    def stored_ids(self) -> tuple[str, ...]:
        """The documents whose vectors make the query (similarTo, recommend), each once."""
        if self.similar_to is not None:
            return (self.similar_to,)
        if self.recommend is not None:
            return tuple(dict.fromkeys([*self.recommend.positive, *self.recommend.negative]))
        return ()

    @classmethod
    def parse(
        cls,
        collection: Any,
        limits: LimitSettings,
        *,
        query: Any = None,
        vector: Any = None,
        limit: Any = 10,
        offset: Any = 0,
        filter: Any = None,
        score_threshold: Any = None,
        mode: Any = SearchMode.SEMANTIC,
        fusion: Any = Fusion.RRF,
        similar_to: Any = None,
        recommend: Recommend | None = None,
        group_by: GroupBy | None = None,
        diversity: Any = None,
        autocut: Any = None,
        rerank: SearchRerank | None = None,
    ) -> SearchRequest:
        collection = check_name(collection, "collection")
        _check_paging(limit, offset, score_threshold, limits)
        _check_extras(limit, offset, group_by, diversity, autocut, limits)
        mode, fusion = _choice(SearchMode, mode, "mode"), _choice(Fusion, fusion, "fusion")
        if sum(given is not None for given in (query, vector, similar_to, recommend)) != 1:
            raise BadInput("give exactly one of query, vector, similarTo or recommend")
        if mode is not SearchMode.SEMANTIC:
            if vector is not None:
                raise BadInput(f"{mode.value} search needs a text query, not a vector", field="vector")
            if query is None:
                field = "similarTo" if similar_to is not None else "recommend"
                raise BadInput(f"{mode.value} search needs a text query; {field} ranks by vectors (SEMANTIC)", field=field)
        if query is not None:
            query = _query(query, limits)
        checked_vector = None
        if vector is not None:
            try:
                values = list(vector) if isinstance(vector, (list, tuple)) else vector  # an ndarray is taken as it is
                checked_vector = tuple(check_vector(values, None).tolist())
            except BadInput as exc:
                raise BadInput(exc.message, field="vector") from None
        request = cls(
            collection,
            query,
            checked_vector,
            limit,
            offset,
            parse_filter(filter) if filter is not None else None,
            score_threshold,
            mode,
            fusion,
            _optional_name(similar_to, "similarTo"),
            _recommend(recommend),
            group_by,
            diversity,
            autocut,
        )
        if similar_to is not None and not request.similar_to:
            raise BadInput(f"similarTo takes 1 to {MAX_STORED_QUERY_DOCUMENTS} non-empty document ids", field="similarTo")
        if rerank is not None:
            request = _with_rerank(request, rerank, limits)
        return request


@dataclass(frozen=True)
class CollectionsSearchRequest:
    """searchCollections: one query over several collections (None: every one the key may read)."""

    query: str
    collections: tuple[str, ...] | None = None
    limit: int = 10
    filter: FilterNode | None = None
    mode: SearchMode = SearchMode.SEMANTIC

    @classmethod
    def parse(
        cls, query: Any, limits: LimitSettings, *, collections: Any = None, limit: Any = 10, filter: Any = None,
        mode: Any = SearchMode.SEMANTIC,
    ) -> CollectionsSearchRequest:  # fmt: skip
        _check_paging(limit, 0, None, limits)
        query = _query(query, limits)
        names: tuple[str, ...] | None = None
        if collections is not None:
            if isinstance(collections, str) or not all(isinstance(c, str) and c for c in collections):
                raise BadInput("collections must be a list of collection names", field="collections")
            names = tuple(dict.fromkeys(check_name(c, "collections") for c in collections))
            if not names:
                raise BadInput("collections is empty: name at least one, or leave it out for all", field="collections")
            check_collection_count(len(names))
        return cls(query, names, limit, parse_filter(filter) if filter is not None else None, _choice(SearchMode, mode, "mode"))

    def on(self, collection: str) -> SearchRequest:
        """The search of one of the collections."""
        return SearchRequest(collection, self.query, limit=self.limit, filter=self.filter, mode=self.mode)


def check_collection_count(count: int) -> None:
    if count > MAX_COLLECTIONS_PER_SEARCH:
        raise BadInput(
            f"searchCollections reads at most {MAX_COLLECTIONS_PER_SEARCH} collections, got {count}; name fewer",
            field="collections",
        )


def _query(query: Any, limits: LimitSettings) -> str:
    return check_text(query, "query", limits.max_text_chars, field="query")


def _check_paging(limit: Any, offset: Any, score_threshold: Any, limits: LimitSettings) -> None:
    check_count(limit, "limit", limits.max_search_limit)
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise BadInput(f"offset must be 0 or more, got {offset!r}", field="offset")
    if score_threshold is not None and (
        isinstance(score_threshold, bool) or not isinstance(score_threshold, (int, float)) or not math.isfinite(score_threshold)
    ):
        raise BadInput("scoreThreshold must be a finite number", field="scoreThreshold")


def _check_extras(
    limit: int, offset: int, group_by: GroupBy | None, diversity: Any, autocut: Any, limits: LimitSettings
) -> None:
    most = limits.max_search_limit
    if diversity is not None:
        if isinstance(diversity, bool) or not isinstance(diversity, (int, float)) or not 0 <= diversity <= 1:
            raise BadInput(f"diversity must be a number from 0 to 1, got {diversity!r}", field="diversity")
    if autocut is not None and (isinstance(autocut, bool) or not isinstance(autocut, int) or autocut < 1):
        raise BadInput(f"autocut must be 1 or more (the jump in score to cut at), got {autocut!r}", field="autocut")
    if group_by is None:
        return
    check_field(group_by.field, "groupBy.field")
    for name, value in (("groups", group_by.groups), ("hitsPerGroup", group_by.hits_per_group)):
        check_count(value, f"groupBy.{name}", most)
    if group_by.groups * group_by.hits_per_group > most:
        raise BadInput(f"groupBy asks for more than {most} hits in all (groups x hitsPerGroup)", field="groupBy")
    if offset:
        raise BadInput("groupBy returns whole groups: offset must be 0", field="offset")
    if diversity:
        raise BadInput("diversity and groupBy cannot be combined", field="diversity")
    if autocut is not None:
        raise BadInput("autocut and groupBy cannot be combined (groups are cut by groups and hitsPerGroup)", field="autocut")


def _recommend(given: Recommend | None) -> Recommend | None:
    if given is None:
        return None
    positive = tuple(str(i) for i in given.positive)
    negative = tuple(str(i) for i in given.negative or ())
    if not positive:
        raise BadInput("recommend needs at least one positive document", field="recommend.positive")
    if set(positive) & set(negative):
        raise BadInput("a document cannot be both positive and negative", field="recommend")
    ids = set(positive) | set(negative)
    if not all(ids) or len(ids) > MAX_STORED_QUERY_DOCUMENTS:
        raise BadInput(f"recommend takes 1 to {MAX_STORED_QUERY_DOCUMENTS} non-empty document ids", field="recommend")
    for doc_id in ids:
        check_name(doc_id, "recommend")
    return Recommend(positive, negative)


def _with_rerank(request: SearchRequest, rerank: SearchRerank, limits: LimitSettings) -> SearchRequest:
    most = limits.max_rerank_documents
    wanted = rerank.candidates
    if request.query is None:
        raise BadInput("rerank needs a text query: a cross-encoder reads the query's text", field="rerank")
    check_count(wanted, "rerank.candidates", most)
    if request.offset + request.limit > most:
        raise BadInput(f"a reranked search reaches at most {most} hits (offset + limit)", field="limit")
    model = _optional_name(rerank.model, "rerank.model")
    return dataclasses.replace(request, rerank=SearchRerank(model, wanted))


# -- ingest -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestErrorItem:
    index: int
    id: str | None
    code: str
    message: str


@dataclass(frozen=True)
class ValidDocument:
    index: int
    id: str
    text: str
    metadata: dict[str, Any]
    content_hash: str
    vector: bytes | None = None  # little-endian float32: the client's own embedding (finite, not all zero)


@dataclass(frozen=True)
class IngestBatch:
    """An ingest call's documents, split into the valid ones and an error per invalid one (an
    invalid document fails alone). A valid document's own vector is checked against the
    collection's dimensions when the collection is read."""

    collection: str
    documents: tuple[ValidDocument, ...]
    errors: tuple[IngestErrorItem, ...] = ()

    @classmethod
    def parse(
        cls, collection: Any, documents: Any, limits: LimitSettings, *, max_text_chars: int | None = None
    ) -> IngestBatch:
        """max_text_chars: the longest text, when not limits.max_text_chars (a job's one-document
        files: CITADEL_LIMITS__MAX_FILE_CHARS)."""
        collection = check_name(collection, "collection")
        most = limits.max_documents_per_ingest
        if not isinstance(documents, (list, tuple)):
            raise BadInput("documents must be a list")
        if len(documents) > most:
            raise BadInput(f"{len(documents)} documents in one call; at most {most}", field="documents")
        valid: list[ValidDocument] = []
        errors: list[IngestErrorItem] = []
        first_index: dict[str, int] = {}
        for index, raw in enumerate(documents):
            given_id = raw.get("id") if isinstance(raw, Mapping) else None
            try:
                doc = _document(index, raw, limits, max_text_chars or limits.max_text_chars)
            except BadInput as exc:
                errors.append(IngestErrorItem(index, _printable_id(given_id), exc.code, exc.message))
                continue
            if doc.id in first_index:
                message = f"id {doc.id!r} is also used by document {first_index[doc.id]} of this call"
                errors.append(IngestErrorItem(index, doc.id, BadInput.code, message))
                continue
            first_index[doc.id] = index
            valid.append(doc)
        return cls(collection, tuple(valid), tuple(errors))


def _document(index: int, raw: Any, limits: LimitSettings, max_chars: int) -> ValidDocument:
    if not isinstance(raw, Mapping):
        raise BadInput("a document must be an object with text, and optionally id and metadata")
    text = raw.get("text")
    if not isinstance(text, str) or not text.strip():
        raise BadInput("text is missing or blank")
    check_text(text, "text", max_chars)

    metadata = raw.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, Mapping):
        raise BadInput("metadata must be a JSON object")
    try:
        encoded = canonical_json(metadata)
    except (TypeError, ValueError) as exc:
        raise BadInput(f"metadata is not plain JSON: {exc}") from None
    if "\\u0000" in encoded:
        raise BadInput("metadata contains a NUL character")
    size = len(check_string(encoded, "metadata").encode("utf-8"))
    if size > limits.max_metadata_bytes:
        raise BadInput(f"metadata is {size} bytes as JSON; at most {limits.max_metadata_bytes}")
    metadata = dict(metadata)

    doc_id = raw.get("id")
    if doc_id is None:
        doc_id = derived_document_id(text, metadata)
    else:
        if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
            raise BadInput("id must be a string")
        doc_id = check_text(str(doc_id), "id", MAX_NAME_CHARS)
    vector = own_vector(raw.get("vector"), raw.get("vector_base64"))
    return ValidDocument(index, doc_id, text, metadata, content_hash(text, metadata, vector), vector)


def own_vector(values: Any, encoded: Any) -> bytes | None:
    """A document's own embedding (a list of floats, or little-endian float32 in base64) as
    float32 bytes; None when it brings none."""
    if values is None and encoded is None:
        return None
    if values is not None and encoded is not None:
        raise BadInput("give vector or vectorBase64, not both")
    if encoded is not None:
        try:
            raw = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else b""
        except (binascii.Error, ValueError):
            raw = b""
        if not raw or len(raw) % 4:
            raise BadInput("vectorBase64 is not base64 of little-endian float32 values")
        return check_vector(np.frombuffer(raw, dtype="<f4"), None, "vectorBase64").tobytes()
    return check_vector(values, None).tobytes()


def _printable_id(value: Any) -> str | None:
    return value[:MAX_NAME_CHARS] if isinstance(value, str) else None


# -- shared -----------------------------------------------------------------------------------


def _optional_name(value: Any, what: str) -> str | None:
    return None if value is None else check_name(value, what)


def _choice(enum_type: Any, value: Any, field: str) -> Any:
    try:
        return value if isinstance(value, enum_type) else enum_type(value)
    except ValueError:
        choices = ", ".join(member.value for member in enum_type)
        raise BadInput(f"unknown {field} {value!r}; one of: {choices}", field=field) from None

