"""GraphQL object types of the API contract (API.md). Resolvers live in queries/mutations."""

from __future__ import annotations

import base64
import enum
import datetime as dt
from typing import TYPE_CHECKING, Optional

import numpy as np
import strawberry

from app.domain.access import Scope as DomainScope
from app.domain.models import ModelState as DomainModelState
from app.domain.embedding import EmbedKind as DomainEmbedKind
from app.domain.vectors import Distance as DomainDistance
from app.domain.vectors import Fusion as DomainFusion
from app.domain.vectors import SearchMode as DomainSearchMode
from app.graphql.scalars import JSON, Long

if TYPE_CHECKING:
    from app.graphql.context import Context


# One definition per concept: the GraphQL enums are the domain's.
EmbedKind = strawberry.enum(DomainEmbedKind, name="EmbedKind")
Distance = strawberry.enum(DomainDistance, name="Distance")
SearchMode = strawberry.enum(
    DomainSearchMode,
    name="SearchMode",
    description="SEMANTIC: dense vectors; KEYWORD: BM25 over the document text; HYBRID: both, fused",
)
Fusion = strawberry.enum(DomainFusion, name="Fusion", description="How HYBRID fuses its two rankings")


@strawberry.input(description="Chunks of at most maxTokens tokens of the collection's model")
class ChunkingInput:
    max_tokens: int
    overlap_tokens: Optional[int] = 0


@strawberry.type
class Chunking:
    max_tokens: int
    overlap_tokens: int


@strawberry.type(description="A chunk of a document: text == document.text[start:end]")
class Chunk:
    index: int
    text: str
    start: int
    end: int


@strawberry.type(description="Documents per value of a metadata field")
class FacetCount:
    value: JSON
    count: Long


@strawberry.enum
class Quantization(enum.Enum):
    NONE = "none"
    INT8 = "int8"


@strawberry.input(description="How a collection is laid out in Qdrant; omitted fields take the CITADEL_VECTORS__* defaults")
class CollectionLayoutInput:
    shard_number: Optional[int] = strawberry.field(default=None, description="Qdrant server: shards")
    replication_factor: Optional[int] = strawberry.field(default=None, description="Qdrant server: copies of each shard")
    write_consistency_factor: Optional[int] = strawberry.field(
        default=None, description="Qdrant server: replicas that must acknowledge a write"
    )
    on_disk_vectors: Optional[bool] = None
    on_disk_payload: Optional[bool] = None
    quantization: Optional[Quantization] = strawberry.field(
        default=None, description="INT8: scalar quantization, searches rescored on the original vectors"
    )


ModelState = strawberry.enum(DomainModelState, name="ModelState")  # one list of states, the state machine's
Scope = strawberry.enum(DomainScope, name="Scope", description="WRITE includes READ; ADMIN includes everything")


@strawberry.input
class DocumentInput:
    id: Optional[strawberry.ID] = None
    text: str
    metadata: Optional[JSON] = None
    vector: Optional[list[float]] = strawberry.field(
        default=None, description="The document's own embedding (the collection's dimensions); the text is then not embedded"
    )
    vector_base64: Optional[str] = strawberry.field(
        default=None, description="The same as `vector`, as little-endian float32 bytes in base64 (compact for bulk loads)"
    )


@strawberry.type
class Embedding:
    index: int
    cached: bool
    values: strawberry.Private[np.ndarray]  # float32 (dimensions,)

    @strawberry.field
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


@strawberry.type
class EmbedResult:
    model: str
    dimensions: int
    embeddings: list[Embedding]


@strawberry.type
class Document:
    id: strawberry.ID
    collection: str
    text: str
    metadata: Optional[JSON]
    content_hash: str
    created_at: dt.datetime
    updated_at: dt.datetime
    indexed: bool = strawberry.field(description="False while the vector is still pending (reconciler)")


@strawberry.type
class SearchHit:
    id: strawberry.ID
    score: float
    text: str
    metadata: Optional[JSON]
    collection_name: strawberry.Private[str]
    mode: SearchMode = strawberry.field(description="The ranking that scored this hit")
    chunk: Optional[Chunk] = strawberry.field(default=None, description="The best-matching chunk; null when not chunked")

    @strawberry.field
    async def document(self, info: strawberry.Info["Context", None]) -> Document:
        return await info.context.document_loader.load((self.collection_name, str(self.id)))


@strawberry.type
class SearchResult:
    collection: str
    model: str
    hits: list[SearchHit]
    took_ms: float


@strawberry.type
class Collection:
    name: str
    model: str
    model_revision: str
    dimensions: int
    distance: Distance
    indexed_fields: list[str]
    created_at: dt.datetime
    keyword_index: bool = strawberry.field(description="BM25 vectors for KEYWORD and HYBRID search (maybe still being built)")
    chunking: Optional[Chunking] = None
    row: strawberry.Private[object] = None

    @strawberry.field
    async def document_count(self, info: strawberry.Info["Context", None]) -> Long:
        # Batched: one query for every collection of the response, through the services.
        return await info.context.count_loader.load(self.name)

    @strawberry.field(description="Share of documents in the keyword index (1.0: ready; null: no keyword index)")
    async def keyword_index_progress(self, info: strawberry.Info["Context", None]) -> Optional[float]:
        return await info.context.services.collections.keyword_progress(self.row)


@strawberry.type
class IngestError:
    index: int
    id: Optional[strawberry.ID]
    code: str
    message: str


@strawberry.type
class IngestResult:
    ids: list[strawberry.ID]
    inserted: int
    updated: int
    unchanged: int
    failed: int
    errors: list[IngestError]
    chunks: int = strawberry.field(description="Vector points written: one per document, or one per chunk")
    warnings: list[IngestError] = strawberry.field(description="Stored, but e.g. TRUNCATED (longer than the model's window)")


@strawberry.type(description="A model's state on one replica of the cluster")
class ModelReplica:
    replica: str
    state: ModelState
    attempts: int
    max_attempts: int
    bytes_done: Long
    bytes_total: Optional[Long]
    device: Optional[str]
    last_error: Optional[str]
    updated_at: dt.datetime


@strawberry.type
class Model:
    name: str
    backend: str
    dimensions: Optional[int]
    state: ModelState
    attempts: int
    max_attempts: int
    bytes_done: Long
    bytes_total: Optional[Long]
    device: Optional[str]
    fallback_for: Optional[str]
    last_error: Optional[str]
    updated_at: dt.datetime
    is_default: bool = strawberry.field(description="True for the model `embed` uses when none is named")
    replica: str = strawberry.field(description="The replica that answers, whose state `state` is")
    replicas: list[ModelReplica] = strawberry.field(description="Every live replica's state of this model, this one first")


@strawberry.type
class DownloadEvent:
    model: str
    replica: str = strawberry.field(description="The replica whose download or state this is")
    state: ModelState
    attempt: int
    max_attempts: int
    file: Optional[str]
    bytes_done: Long
    bytes_total: Optional[Long]
    percent: Optional[float]
    bytes_per_second: Optional[float]
    message: Optional[str]
    at: dt.datetime
    kind: str = strawberry.field(description='"state" for a state change, "progress" for a byte-progress tick')
    model_bytes_done: Optional[Long] = strawberry.field(description="Bytes of the whole model so far (bytesDone is per file when `file` is set)")
    model_bytes_total: Optional[Long] = strawberry.field(description="Bytes of the whole model, when known")


@strawberry.type
class DependencyHealth:
    name: str
    ok: bool
    latency_ms: Optional[float]
    detail: Optional[str]


@strawberry.type
class Health:
    status: str
    version: str
    dependencies: list[DependencyHealth]
    models: list[Model]


@strawberry.type
class DocumentConnection:
    items: list[Document]
    next_cursor: Optional[str]


@strawberry.input
class ApiKeyInput:
    name: str
    scopes: list[Scope]
    collections: Optional[list[str]] = strawberry.field(default=None, description="null: every collection")
    filter: Optional[JSON] = strawberry.field(default=None, description="Tenant binding: ANDed into every read, required of every write")
    rate_per_second: Optional[float] = strawberry.field(default=None, description="null: no per-key limit")


@strawberry.type
class ApiKey:
    id: strawberry.ID
    name: str
    prefix: str
    scopes: list[Scope]
    collections: Optional[list[str]]
    filter: Optional[JSON]
    rate_per_second: Optional[float]
    created_at: dt.datetime
    last_used_at: Optional[dt.datetime]
    revoked: bool


@strawberry.type
class CreatedApiKey:
    key: ApiKey
    secret: str = strawberry.field(description="Shown here once, never again")
