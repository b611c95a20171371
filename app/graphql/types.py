"""GraphQL object types of the API contract (schema.graphql). Resolvers live in queries/mutations."""

from __future__ import annotations

import base64
import enum
import datetime as dt
from typing import TYPE_CHECKING, Annotated, Optional

import numpy as np
import strawberry

from app.domain.access import Scope as DomainScope
from app.domain.models import ModelState as DomainModelState
from app.domain.embedding import EmbedKind as DomainEmbedKind
from app.domain.vectors import Distance as DomainDistance
from app.domain.vectors import Fusion as DomainFusion
from app.domain.vectors import SearchMode as DomainSearchMode
from app.graphql.describe import described_enum
from app.graphql.scalars import JSON, Long
from app.validation import check_count

MAX_TOP_VALUES = 1_000  # FieldStats.topValues

if TYPE_CHECKING:
    from app.graphql.context import Context


# One definition per concept: the GraphQL enums are the domain's.
EmbedKind = described_enum(
    DomainEmbedKind,
    name="EmbedKind",
    description="What a text is embedded as: models with prompts (e.g. e5's `query: `/`passage: `) embed each kind with its own",
    values={
        "QUERY": "A search query (the model's query prompt, if it has one)",
        "DOCUMENT": "A passage to be searched (the model's document prompt, if it has one)",
    },
)
Distance = described_enum(
    DomainDistance,
    name="Distance",
    description="How a collection compares vectors",
    values={
        "COSINE": "Cosine similarity: 1 is identical, higher is closer",
        "DOT": "Dot product: higher is closer",
        "EUCLID": "Euclidean distance: lower is closer",
    },
)
SearchMode = described_enum(
    DomainSearchMode,
    name="SearchMode",
    description="SEMANTIC: dense vectors; KEYWORD: BM25 over the document text; HYBRID: both, fused",
    values={
        "SEMANTIC": "Ranks by meaning: the query's dense vector against the documents'",
        "KEYWORD": "Ranks by BM25 over the document text: exact terms, codes, names",
        "HYBRID": "Both rankings, fused in the store (see Fusion)",
    },
)
Fusion = described_enum(
    DomainFusion,
    name="Fusion",
    description="How HYBRID fuses its two rankings",
    values={
        "RRF": "Reciprocal rank fusion: by rank in each list, scores are not compared",
        "DBSF": "Distribution-based score fusion: each list's scores normalised, then summed",
    },
)


@strawberry.input(description="Chunks of at most maxTokens tokens of the collection's model")
class ChunkingInput:
    max_tokens: int = strawberry.field(description="Most tokens (of the collection's model) in one chunk; 64 to 128 suit short-window models")
    overlap_tokens: Optional[int] = strawberry.field(
        default=0, description="Tokens each chunk repeats from the one before (about 10 to 20% of maxTokens); less than maxTokens"
    )


@strawberry.type(description="How a collection's documents are split into chunks, each embedded on its own")
class Chunking:
    max_tokens: int = strawberry.field(description="Most tokens (of the collection's model) in one chunk")
    overlap_tokens: int = strawberry.field(description="Tokens each chunk repeats from the one before")


@strawberry.type(description="A chunk of a document: text == document.text[start:end]")
class Chunk:
    index: int = strawberry.field(description="The chunk's position in its document, from 0")
    text: str = strawberry.field(description="The chunk's text")
    start: int = strawberry.field(description="Offset of its first character in the document's text (characters, not bytes)")
    end: int = strawberry.field(description="Offset just past its last character in the document's text")


@strawberry.type(description="Documents per value of a metadata field")
class FacetCount:
    value: JSON = strawberry.field(description="A value of the field (a list's elements are counted one by one)")
    count: Long = strawberry.field(description="Documents under the filter with this value")


@strawberry.enum(description="Vector compression of a collection")
class Quantization(enum.Enum):
    NONE = strawberry.enum_value("none", description="Full float32 vectors")
    INT8 = strawberry.enum_value("int8", description="int8 scalar quantization (a quarter of the memory); searches rescored on the originals")


@strawberry.input(description="How a collection is laid out in Qdrant; omitted fields take the CITADEL_VECTORS__* defaults")
class CollectionLayoutInput:
    shard_number: Optional[int] = strawberry.field(default=None, description="Qdrant server: shards")
    replication_factor: Optional[int] = strawberry.field(default=None, description="Qdrant server: copies of each shard")
    write_consistency_factor: Optional[int] = strawberry.field(
        default=None, description="Qdrant server: replicas that must acknowledge a write"
    )
    on_disk_vectors: Optional[bool] = strawberry.field(
        default=None, description="Keep the original vectors on disk (with INT8 the codes stay in memory)"
    )
    on_disk_payload: Optional[bool] = strawberry.field(default=None, description="Keep payloads (metadata) on disk")
    quantization: Optional[Quantization] = strawberry.field(
        default=None, description="INT8: scalar quantization, searches rescored on the original vectors"
    )


ModelState = described_enum(  # one list of states, the state machine's
    DomainModelState,
    name="ModelState",
    description="Where a model is on its way from the hub to serving",
    values={
        "NOT_DOWNLOADED": "Not in the model cache and no download started",
        "QUEUED": "Waiting to download (another replica holds the shared cache's lock, or a slot)",
        "DOWNLOADING": "Files are being fetched (see bytesDone/bytesTotal)",
        "RETRYING": "An attempt failed; the next starts after CITADEL_DOWNLOADS__RETRY_DELAY_SECONDS",
        "VERIFYING": "Checking the files' sizes and sha256",
        "LOADING": "Loading into memory on its device",
        "READY": "Serving requests",
        "FAILED": "Every attempt failed (lastError says why); downloadModel tries again",
    },
)
Scope = described_enum(
    DomainScope,
    name="Scope",
    description="WRITE includes READ; ADMIN includes everything",
    values={
        "READ": "Queries and subscriptions: embed, search, facets, documents, models",
        "WRITE": "READ, and ingest and deleteDocuments",
        "ADMIN": "Everything: collections, model downloads, API keys",
    },
)


@strawberry.input(description="A document to store and index")
class DocumentInput:
    id: Optional[strawberry.ID] = strawberry.field(
        default=None, description="Your id (at most 256 characters); omitted: one is generated. An existing id is updated"
    )
    text: str = strawberry.field(description="The text to embed and search (at most CITADEL_LIMITS__MAX_TEXT_CHARS characters)")
    metadata: Optional[JSON] = strawberry.field(
        default=None, description="A JSON object that filters match (at most CITADEL_LIMITS__MAX_METADATA_BYTES bytes of JSON)"
    )
    vector: Optional[list[float]] = strawberry.field(
        default=None, description="The document's own embedding (the collection's dimensions); the text is then not embedded"
    )
    vector_base64: Optional[str] = strawberry.field(
        default=None, description="The same as `vector`, as little-endian float32 bytes in base64 (compact for bulk loads)"
    )


@strawberry.type(description="One text's vector")
class Embedding:
    index: int = strawberry.field(description="Position of its text in `texts`")
    cached: bool = strawberry.field(description="True when it came from the embedding cache, not the model")
    values: strawberry.Private[np.ndarray]  # float32 (dimensions,)

    @strawberry.field(description="The vector as floats (`dimensions` of them)")
    def vector(self) -> list[float]:
        return self.values.tolist()

    @strawberry.field(
        description="The vector as little-endian float32 bytes, base64-encoded (a quarter of the JSON of `vector`)"
    )
    def vector_base64(self) -> str:
        return vector_base64(self.values)


def vector_base64(values: np.ndarray) -> str:
    """Little-endian float32 bytes, base64: OpenAI's `encoding_format: "base64"`."""
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode("ascii")


@strawberry.type(description="The vectors of an embed call")
class EmbedResult:
    model: str = strawberry.field(description="The model that embedded them (the default, or its fallback, when none was named)")
    dimensions: int = strawberry.field(description="Length of every vector")
    embeddings: list[Embedding] = strawberry.field(description="One per text, in input order")


@strawberry.type(description="A stored document (PostgreSQL is its source of truth)")
class Document:
    id: strawberry.ID = strawberry.field(description="The document's id in its collection")
    collection: str = strawberry.field(description="The collection's name")
    text: str = strawberry.field(description="The whole text as ingested")
    metadata: Optional[JSON] = strawberry.field(description="The metadata object as ingested")
    content_hash: str = strawberry.field(description="sha256 of its text, metadata and vector: unchanged re-ingests are skipped")
    created_at: dt.datetime = strawberry.field(description="When it was first ingested (UTC)")
    updated_at: dt.datetime = strawberry.field(description="When its content last changed (UTC)")
    indexed: bool = strawberry.field(description="False while the vector is still pending (reconciler)")


@strawberry.type(description="A matching document, best first")
class SearchHit:
    id: strawberry.ID = strawberry.field(description="The document's id")
    score: float = strawberry.field(description="The mode's own score: cosine/dot (higher is closer) or euclid distance, BM25, or the fused score")
    text: str = strawberry.field(description="The document's text")
    metadata: Optional[JSON] = strawberry.field(description="The document's metadata")
    collection_name: strawberry.Private[str]
    mode: SearchMode = strawberry.field(description="The ranking that scored this hit")
    chunk: Optional[Chunk] = strawberry.field(default=None, description="The best-matching chunk; null when not chunked")
    rerank_score: Optional[float] = strawberry.field(
        default=None,
        description="The cross-encoder's score when the search was reranked (`rerank`), hits then ordered by it; "
        "`score` stays the retrieval score",
    )

    @strawberry.field(description="The whole stored document (batched: one read for every hit)")
    async def document(self, info: strawberry.Info["Context", None]) -> Document:
        from app.graphql.convert import document_to_gql  # convert imports this module

        return document_to_gql(await info.context.document_loader.load((self.collection_name, str(self.id))))

    @strawberry.field(description="The collection this hit was found in (searchCollections mixes several)")
    def collection(self) -> str:
        return self.collection_name


@strawberry.type(description="Hits sharing one value of the groupBy field, best first")
class SearchGroup:
    value: Optional[JSON] = strawberry.field(description="The groupBy field's value shared by these hits")
    hits: list[SearchHit] = strawberry.field(description="At most hitsPerGroup hits of this group, best first")


@strawberry.input(description="Group hits by a metadata field's value (a list value puts a document in each of its values' groups; documents without the field are left out)")
class GroupByInput:
    field: str = strawberry.field(description="The metadata field to group by (dotted path for nested keys)")
    groups: Optional[int] = strawberry.field(default=10, description="Most groups returned, best group (by its best hit) first")
    hits_per_group: Optional[int] = strawberry.field(default=1, description="Most hits per group, best first")


@strawberry.input(description="Rank by stored documents, as Qdrant's recommend API with the average_vector strategy: query = 2*mean(positive) - mean(negative); these documents are left out of the hits")
class RecommendInput:
    positive: list[strawberry.ID] = strawberry.field(description="Documents to find more like (at least one)")
    negative: Optional[list[strawberry.ID]] = strawberry.field(default_factory=list, description="Documents to move away from")


@strawberry.type(description="One ranking over several collections, fused by rank (RRF, k=60)")
class CollectionsSearchResult:
    hits: list[SearchHit] = strawberry.field(description="At most `limit` hits, best first; `score` is the RRF score and `collection` names where each was found")
    took_ms: float = strawberry.field(description="Time the search took in the gateway, in milliseconds")


@strawberry.type(description="The answer of a search")
class SearchResult:
    collection: str = strawberry.field(description="The collection searched")
    model: str = strawberry.field(description="The collection's model, which embedded the query")
    hits: list[SearchHit] = strawberry.field(description="At most `limit` documents, best first")
    took_ms: float = strawberry.field(description="Time the search took in the gateway, in milliseconds")
    groups: Optional[list[SearchGroup]] = strawberry.field(
        default=None, description="Set when groupBy is given: the groups, best first (`hits` is then their hits in that order)"
    )


@strawberry.type(description="A set of documents embedded by one model")
class Collection:
    name: str = strawberry.field(description="Unique name")
    model: str = strawberry.field(description="The model every document and query of this collection is embedded with")
    model_revision: str = strawberry.field(description="The model's revision (commit) when the collection was created")
    dimensions: int = strawberry.field(description="Length of its vectors")
    distance: Distance = strawberry.field(description="How vectors are compared")
    indexed_fields: list[str] = strawberry.field(description='Metadata fields with a payload index, e.g. "topic" or "n:integer"')
    created_at: dt.datetime = strawberry.field(description="When it was created (UTC)")
    keyword_index: bool = strawberry.field(description="BM25 vectors for KEYWORD and HYBRID search (maybe still being built)")
    chunking: Optional[Chunking] = strawberry.field(default=None, description="How documents are chunked; null: one vector per document")
    row: strawberry.Private[object] = None

    @strawberry.field(description="Documents stored (a tenant-bound key counts only its own)")
    async def document_count(self, info: strawberry.Info["Context", None]) -> Long:
        # Batched: one query for every collection of the response, through the services.
        return await info.context.count_loader.load(self.name)

    @strawberry.field(description="Share of documents in the keyword index (1.0: ready; null: no keyword index)")
    async def keyword_index_progress(self, info: strawberry.Info["Context", None]) -> Optional[float]:
        return await info.context.services.collections.keyword_progress(self.row)

    @strawberry.field(description="The state of its vector index: points, how many the ANN index serves, whether a build runs")
    async def vector_index(self, info: strawberry.Info["Context", None]) -> VectorIndexStatus:
        status = await info.context.services.collections.vector_index(self.row)
        return VectorIndexStatus(points=status.points, indexed_points=status.indexed_points, optimizing=status.optimizing)


@strawberry.type(description="How much of a collection its approximate-nearest-neighbour (HNSW) index serves")
class VectorIndexStatus:
    points: Long = strawberry.field(description="Vector points in the collection (one per document, or one per chunk)")
    indexed_points: Long = strawberry.field(
        description="Points served by the ANN index; the others (a collection below the index threshold, "
        "points written since the last build) are searched exactly"
    )
    optimizing: bool = strawberry.field(description="A background build of the index (or a compaction) is running")


@strawberry.type(description="What went wrong (or is worth knowing) about one document of an ingest")
class IngestError:
    index: int = strawberry.field(description="Position of the document in `documents`")
    id: Optional[strawberry.ID] = strawberry.field(description="The document's id, when it had one")
    code: str = strawberry.field(description="An error code as in extensions.code (BAD_INPUT, FORBIDDEN, CONFLICT...), or TRUNCATED")
    message: str = strawberry.field(description="What happened, for people")


@strawberry.type(description="What an ingest did, document by document")
class IngestResult:
    ids: list[strawberry.ID] = strawberry.field(description="Each document's id, in input order (generated where none was given)")
    inserted: int = strawberry.field(description="New documents")
    updated: int = strawberry.field(description="Existing documents whose content changed")
    unchanged: int = strawberry.field(description="Existing documents sent again with the same content (not re-embedded)")
    failed: int = strawberry.field(description="Documents refused (see errors)")
    errors: list[IngestError] = strawberry.field(description="One per refused document")
    chunks: int = strawberry.field(description="Vector points written: one per document, or one per chunk")
    warnings: list[IngestError] = strawberry.field(description="Stored, but e.g. TRUNCATED (longer than the model's window)")


@strawberry.type(description="A model's state on one replica of the cluster")
class ModelReplica:
    replica: str = strawberry.field(description="The replica's id (CITADEL_REPLICA_ID)")
    state: ModelState = strawberry.field(description="The model's state there")
    attempts: int = strawberry.field(description="Download attempts made there")
    max_attempts: int = strawberry.field(description="Attempts it makes before FAILED")
    bytes_done: Long = strawberry.field(description="Bytes downloaded there")
    bytes_total: Optional[Long] = strawberry.field(description="Bytes of the model, when known")
    device: Optional[str] = strawberry.field(description="Where it runs there once loaded (cpu, cuda:0...)")
    last_error: Optional[str] = strawberry.field(description="The last error there (paths and URLs only for ADMIN keys)")
    updated_at: dt.datetime = strawberry.field(description="When that replica last reported (UTC)")


@strawberry.type(description="A model of the catalog and its state on the replica that answers")
class Model:
    name: str = strawberry.field(description="Catalog name, e.g. BAAI/bge-small-en-v1.5")
    backend: str = strawberry.field(description="sentence-transformers (torch) or fastembed (ONNX Runtime)")
    dimensions: Optional[int] = strawberry.field(description="Length of its vectors, when known")
    state: ModelState = strawberry.field(description="Its state on the replica that answers")
    attempts: int = strawberry.field(description="Download attempts made")
    max_attempts: int = strawberry.field(description="Attempts made before FAILED (CITADEL_DOWNLOADS__MAX_ATTEMPTS)")
    bytes_done: Long = strawberry.field(description="Bytes downloaded")
    bytes_total: Optional[Long] = strawberry.field(description="Bytes of the model, when known")
    device: Optional[str] = strawberry.field(description="Where it runs once loaded (cpu, cuda:0...)")
    fallback_for: Optional[str] = strawberry.field(description="The default model this one stands in for while that one cannot be had")
    last_error: Optional[str] = strawberry.field(description="The last error (paths and URLs only for ADMIN keys)")
    updated_at: dt.datetime = strawberry.field(description="When its state last changed (UTC)")
    is_default: bool = strawberry.field(description="True for the model `embed` uses when none is named")
    replica: str = strawberry.field(description="The replica that answers, whose state `state` is")
    replicas: list[ModelReplica] = strawberry.field(description="Every live replica's state of this model, this one first")


@strawberry.type(description="A model's state change or download progress on one replica")
class DownloadEvent:
    model: str = strawberry.field(description="The model's catalog name")
    replica: str = strawberry.field(description="The replica whose download or state this is")
    state: ModelState = strawberry.field(description="The model's state")
    attempt: int = strawberry.field(description="The download attempt, from 1")
    max_attempts: int = strawberry.field(description="Attempts made before FAILED")
    file: Optional[str] = strawberry.field(description="The file being fetched (progress events)")
    bytes_done: Long = strawberry.field(description="Bytes of `file` so far (of the model when `file` is null)")
    bytes_total: Optional[Long] = strawberry.field(description="Bytes of `file` (of the model when `file` is null), when known")
    percent: Optional[float] = strawberry.field(description="bytesDone of bytesTotal, 0 to 100, when known")
    bytes_per_second: Optional[float] = strawberry.field(description="Recent download speed, bytes per second")
    message: Optional[str] = strawberry.field(description="What happened, for people (errors: paths and URLs only for ADMIN keys)")
    at: dt.datetime = strawberry.field(description="When it happened (UTC)")
    kind: str = strawberry.field(description='"state" for a state change, "progress" for a byte-progress tick')
    model_bytes_done: Optional[Long] = strawberry.field(description="Bytes of the whole model so far (bytesDone is per file when `file` is set)")
    model_bytes_total: Optional[Long] = strawberry.field(description="Bytes of the whole model, when known")


@strawberry.type(description="One dependency's check")
class DependencyHealth:
    name: str = strawberry.field(description="postgres, redis or qdrant")
    ok: bool = strawberry.field(description="Whether it answered")
    latency_ms: Optional[float] = strawberry.field(description="How long it took to answer, in milliseconds")
    detail: Optional[str] = strawberry.field(description="Its error, or (for ADMIN keys) its address")


@strawberry.type(description="Whether this replica can serve")
class Health:
    status: str = strawberry.field(description='"ok" when every dependency answers, else "degraded"')
    version: str = strawberry.field(description="Citadel's version")
    dependencies: list[DependencyHealth] = strawberry.field(description="PostgreSQL, Redis and Qdrant, each checked now")
    models: list[Model] = strawberry.field(description="Every catalog model's state on this replica")


@strawberry.type(description="A page of documents")
class DocumentConnection:
    items: list[Document] = strawberry.field(description="At most `first` documents in id order (fewer where a scan budget ended)")
    next_cursor: Optional[str] = strawberry.field(description="Pass as `after` for the next page; null on the last page")


@strawberry.enum(description="Which way a sort goes; documents without the field come last either way")
class SortOrder(enum.Enum):
    ASC = strawberry.enum_value("asc", description="Smallest (earliest, A before B, false before true) first")
    DESC = strawberry.enum_value("desc", description="Largest (latest, B before A, true before false) first")


@strawberry.input(description="One key of a sorted `documents` listing: a metadata field and its order")
class SortInput:
    field: str = strawberry.field(
        description="A metadata field (`a.b` for nested keys) holding one number, string, boolean or datetime per document"
    )
    order: Optional[SortOrder] = strawberry.field(default=SortOrder.ASC, description="ASC (the default) or DESC")


@strawberry.type(description="Statistics of one metadata field over the documents aggregated (a list counts each element)")
class FieldStats:
    field: str = strawberry.field(description="The metadata field, as asked")
    count: Long = strawberry.field(description="Documents that have the field (present, not null, not an empty list)")
    min: Optional[JSON] = strawberry.field(
        description="Smallest number; for a field of only datetime strings, the earliest datetime (ISO-8601, UTC); else null"
    )
    max: Optional[JSON] = strawberry.field(
        description="Largest number; for a field of only datetime strings, the latest datetime (ISO-8601, UTC); else null"
    )
    mean: Optional[float] = strawberry.field(description="Mean of the numeric values (null without any)")
    sum: Optional[float] = strawberry.field(description="Sum of the numeric values, exact then rounded once (null without any)")
    ranked: strawberry.Private[list]

    @strawberry.field(
        description="The most frequent string, integer and boolean values, each counted once per document, most frequent first"
    )
    def top_values(
        self,
        limit: Annotated[Optional[int], strawberry.argument(description=f"How many values, 1 to {MAX_TOP_VALUES} (null: 5)")] = 5,
    ) -> list[FacetCount]:
        limit = check_count(5 if limit is None else limit, "limit", MAX_TOP_VALUES)
        return [FacetCount(value=value, count=count) for value, count in self.ranked[:limit]]


@strawberry.type(description="The documents whose groupBy field holds one value (a document with a list is in each element's group)")
class AggregateGroup:
    value: Optional[JSON] = strawberry.field(description="The groupBy field's value shared by the group")
    count: Long = strawberry.field(description="Documents in the group")
    fields: list[FieldStats] = strawberry.field(description="Statistics of the asked fields within the group")


@strawberry.type(description="Exact aggregates over a collection's documents under a filter, counted from PostgreSQL's rows")
class AggregateResult:
    count: Long = strawberry.field(description="Documents under the filter (and the key's tenant filter)")
    fields: list[FieldStats] = strawberry.field(description="Statistics of each asked field, in the order asked")
    groups: Optional[list[AggregateGroup]] = strawberry.field(
        description="With groupBy: the largest groups first (ties by value), at most maxGroups; null without groupBy"
    )
    group_count: Optional[Long] = strawberry.field(
        description="With groupBy: how many groups there are in all (groups may list fewer); null without groupBy"
    )


@strawberry.input(description="A new API key")
class ApiKeyInput:
    name: str = strawberry.field(description="A name for people (audit lines carry it)")
    scopes: list[Scope] = strawberry.field(description="What it may do")
    collections: Optional[list[str]] = strawberry.field(default=None, description="null: every collection")
    filter: Optional[JSON] = strawberry.field(default=None, description="Tenant binding: ANDed into every read, required of every write")
    rate_per_second: Optional[float] = strawberry.field(default=None, description="null: no per-key limit")


@strawberry.type(description="An API key (its secret is never shown again)")
class ApiKey:
    id: strawberry.ID = strawberry.field(description="The key's id (revokeApiKey takes it)")
    name: str = strawberry.field(description="Its name")
    prefix: str = strawberry.field(description="The start of its secret, to recognise it")
    scopes: list[Scope] = strawberry.field(description="What it may do")
    collections: Optional[list[str]] = strawberry.field(description="The collections it may use; null: every collection")
    filter: Optional[JSON] = strawberry.field(description="Its tenant filter: ANDed into every read, required of every write")
    rate_per_second: Optional[float] = strawberry.field(description="Operations per second it may run; null: no limit")
    created_at: dt.datetime = strawberry.field(description="When it was created (UTC)")
    last_used_at: Optional[dt.datetime] = strawberry.field(description="When it was last used (UTC, approximate)")
    revoked: bool = strawberry.field(description="True once revoked: it no longer works anywhere")


@strawberry.type(description="A key just created, with its secret")
class CreatedApiKey:
    key: ApiKey = strawberry.field(description="The key")
    secret: str = strawberry.field(description="Shown here once, never again")
