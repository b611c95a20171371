"""All configuration, read from CITADEL_* environment variables and a .env file.

Nested groups use a double underscore: CITADEL_INFERENCE__MAX_BATCH_SIZE=32.
Every field here is listed in the README's configuration table.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit
from typing import Annotated, Literal

from platformdirs import user_data_dir
from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.domain.models import BUILTIN_DEFAULT_MODEL, BUILTIN_DEFAULT_RERANKER, ModelSpec, builtin_catalog

__all__ = ["ModelSpec", "Settings"]  # ModelSpec is the catalog's type; it lives in app.domain.models

class ServerSettings(BaseModel):
    host: str = Field("127.0.0.1", description="Bind address")
    port: int = Field(8000, description="HTTP port")
    log_level: str = Field("INFO", description="Log level (loguru)")
    log_json: bool = Field(False, description="Write logs as JSON lines")
    access_log: bool = Field(False, description="Log every HTTP request (about 0.2 ms of CPU each, a fifth of a cached embed; /metrics counts requests anyway)")
    graphiql: bool = Field(True, description="Serve GraphiQL at /graphql to browsers")
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=0, description="Largest request body of /graphql and /v1/embeddings, else 413 before it is read; 32 MiB, as Qdrant's request limit, fits the largest ingest the default limits allow (0: sized for the largest ingest the limits allow)")
    ws_init_timeout_seconds: float = Field(5.0, description="A WebSocket that sends no connection_init within this is closed (4408; 1002 on legacy graphql-ws)")
    max_subscriptions_per_connection: int = Field(20, description="Operations one WebSocket may run at once")
    max_subscriptions_per_key: int = Field(100, description="Operations one API key (or, without a key, one client address) may run at once over all its WebSockets and SSE streams to this replica")
    # NoDecode: the environment may give a comma-separated list as well as JSON.
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Browser origins allowed to call /graphql (HTTP and WebSocket), comma-separated or JSON; `*` allows any",
    )
    introspection: bool = Field(True, description="GraphQL introspection for non-admin keys (admins always have it)")
    persisted_queries: bool = Field(True, description="Automatic persisted queries (Apollo's APQ): documents stored in Redis by sha256, shared by every replica")
    persisted_query_ttl_seconds: int = Field(86_400, ge=1, description="How long a persisted query stays in Redis after it was last sent with its text")
    persisted_query_max_bytes: int = Field(131_072, ge=0, description="Largest document (UTF-8 bytes) stored as a persisted query; a larger one runs but is not stored")
    trusted_documents: Literal["off", "require"] = Field("off", description="`require`: keys other than ADMIN may only run documents registered with `citadel documents add` (by documentId or APQ hash); others are FORBIDDEN")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _normalise_origins(cls, value: list[str]) -> list[str]:
        # Browsers send scheme://host[:port] with no path or trailing slash.
        return [origin.rstrip("/") for origin in value]


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


class AuthSettings(BaseModel):
    required: bool | None = Field(None, description="Only /healthz and /readyz without a valid key (unset: true unless the server binds a loopback address)")
    admin_key: SecretStr | None = Field(None, description="An ADMIN secret from the environment, for bootstrapping and operations")
    metrics_token: SecretStr | None = Field(None, description="Bearer token that may read /metrics when keys are required (an ADMIN key may too)")
    key_cache_seconds: float = Field(5.0, description="How long a replica trusts a looked-up key (revocations reach every replica at once through Redis; this long without it)")
    burst_seconds: float = Field(2.0, description="Rate-limit burst: a key may spend this many seconds of its rate at once")

    @field_validator("admin_key", "metrics_token", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # `CITADEL_AUTH__ADMIN_KEY=` (e.g. an unset variable in docker compose) means no key.
        return None if isinstance(value, str) and not value.strip() else value


class LimitSettings(BaseModel):
    """Request limits; anything beyond them is BAD_INPUT before any work is done."""

    max_texts_per_request: int = Field(256, description="Most texts in one embed call")
    max_inputs_per_openai_request: int = Field(2_048, ge=1, description="Most inputs in one POST /v1/embeddings, as OpenAI allows (GraphQL `embed` keeps max_texts_per_request): the model works through them in slices of at most max_texts_per_request, the first admitted as an embed call is (OVERLOADED at once where the caller's share of the queue is full), the rest waiting for room in it; max_text_chars and max_request_chars apply to the whole request")
    max_text_chars: int = Field(20_000, description="Longest text (characters)")
    max_request_chars: int = Field(2_000_000, description="Most characters in one embed call")
    max_documents_per_ingest: int = Field(256, description="Most documents in one ingest call (with max_text_chars and max_metadata_bytes, sized to fit the body limit)")
    max_metadata_bytes: int = Field(16_384, description="Largest metadata object (JSON bytes)")
    max_query_depth: int = Field(12, description="Deepest GraphQL document")
    max_aliases: int = Field(32, description="Most aliases in one GraphQL document")
    max_query_tokens: int = Field(4_000, description="Most tokens in one GraphQL document")
    max_search_limit: int = Field(1_000, description="Largest search limit / page size")
    max_rerank_documents: int = Field(1_000, ge=1, description="Most documents in one rerank call (`rerank`, /v1/rerank, /rerank) and most `candidates` of `search(rerank:)`")
    max_scan_points: int = Field(100_000, ge=0, description="Most points or rows one request may read by scanning where no index answers (facets of fields outside indexedFields, a tenant-bound key's document counts and pages): facets and counts over it are BAD_INPUT before the scan, pages stop early with a cursor (0: no limit)")
    max_upload_bytes: int = Field(1 << 30, ge=1, description="Largest multipart request to /graphql (ingestFiles: every file and the operation together); it is streamed to disk under the data dir, never held in memory, and a larger one is HTTP 413 (BAD_INPUT) before it is read when its Content-Length says so, else as soon as it passes the limit")
    max_file_chars: int = Field(2_000_000, ge=1, description="Longest text of one uploaded text, Markdown, HTML or PDF file (ingestFiles: one document each, chunked by its collection's chunking); other documents keep max_text_chars")


class InferenceSettings(BaseModel):
    devices: str = Field("auto", description="`auto` (every visible GPU, else CPU), `cpu`, or a list like `cuda:0,cuda:1`")
    max_batch_size: int = Field(64, description="Most texts in one forward pass")
    bulk_pass_texts: int = Field(16, ge=1, description="Most texts in a forward pass of bulk work only (ingest, jobs, the reconciler: stored texts that wait for room), so an interactive request arriving while every pass slot is busy with bulk work waits for a short pass at most")
    max_batch_tokens: int = Field(16_384, description="Token budget of one forward pass on a GPU")
    max_batch_tokens_cpu: int = Field(2_048, ge=1, description="Token budget of one forward pass on a CPU: small enough that a pass takes a fraction of a second, so a text that arrives behind a long queue waits little for the next pass")
    pass_overhead_tokens: int = Field(256, ge=0, description="What one more forward pass costs, in padded tokens: texts of mixed lengths are split into passes by length where that saves more padding (0: split whenever padding shrinks)")
    max_wait_ms: float = Field(5.0, description="How long a batch waits for more requests while no pass runs: after the last text that arrived, or after the last pass ended")
    max_gather_ms: float = Field(50.0, description="Longest a batch keeps waiting while texts keep arriving (each within max_wait_ms of the last)")
    max_queue: int = Field(1_024, description="Texts waiting per model (all replicas); beyond it OVERLOADED")
    max_queue_per_key: int = Field(512, ge=1, description="Texts one API key (without keys: one client address) may have waiting per model; beyond it that caller gets OVERLOADED and others go on. While several keys wait, each may hold at most max_queue / (keys waiting + 1), so keys already waiting always leave room for one more. Queued texts are served fairly between callers, by tokens")
    truncate: bool = Field(True, description="Truncate over-long inputs (false: BAD_INPUT)")
    idle_unload_seconds: float = Field(0.0, description="Unload a model idle this long (0: never)")
    unpadded: bool = Field(True, description="BERT-family torch models compute no padding: linear layers run over the real tokens only, attention over a masked padded view (same vectors within float rounding; off: the model's padded forward)")
    passes_at_once: int = Field(0, ge=0, description="Forward passes a CPU replica runs at once, each on its share of the cores (0: auto, 2 where there are 2 cores or more; a GPU replica runs 1): independent single-threaded passes keep every core busy while the event loop answers, where one multi-threaded pass stalls")
    threads: int = Field(0, ge=0, description="CPU threads of one forward pass (0: torch divides the usable cores among the passes at once; ONNX Runtime takes its default)")


class CacheSettings(BaseModel):
    enabled: bool = Field(True, description="Use the Redis embedding cache")
    ttl_seconds: int = Field(7 * 24 * 3600, description="Lifetime of a cached embedding")
    key_prefix: str | None = Field(None, description="Redis key prefix of cached embeddings (default `citadel:<namespace>:emb:`)")
    # Size policy: the embedded Redis gets maxmemory + allkeys-lru; an external Redis keeps its own policy.
    max_memory_mb: int = Field(512, description="maxmemory (allkeys-lru) of the embedded Redis")
    timeout_ms: float = Field(1000.0, description="A slower cache is skipped for that request (event-loop lag counts too)")
    local_max_mb: int = Field(64, ge=0, description="Vectors kept in each replica's memory in front of Redis (least recently used out; 0: none)")


class DownloadSettings(BaseModel):
    max_attempts: int = Field(3, description="Download attempts per model")
    retry_delay_seconds: float = Field(10.0, description="Pause between download attempts")
    timeout_seconds: float = Field(30.0, description="HTTP timeout of the downloader")
    progress_interval_seconds: float = Field(0.25, description="Least time between two progress events of a file")
    min_free_disk_mb: int = Field(256, description="Free disk kept beyond a download")
    shared_cache: bool = Field(False, description="Replicas share one model cache directory: one downloads (a PostgreSQL lock), the others wait and load its files")
    on_demand: bool = Field(False, description="Any key's embed may start downloading a catalog model that is not in the model cache (off: only ADMIN keys, and every caller while keys are not required; others get MODEL_UNAVAILABLE)")


class IngestSettings(BaseModel):
    # Documents, not text chunks (chunking is a collection's): CITADEL_INGEST__CHUNK_SIZE, its old name, still works.
    embed_batch: int = Field(256, ge=1, validation_alias=AliasChoices("embed_batch", "chunk_size"), description="Documents an ingest (or the reconciler) embeds per call to the model pool (at most CITADEL_LIMITS__MAX_TEXTS_PER_REQUEST); CITADEL_INGEST__CHUNK_SIZE is its old name")
    reconcile_interval_seconds: float = Field(30.0, description="How often pending documents are re-indexed")
    job_batch_documents: int = Field(64, ge=1, description="Documents a job (startIngestJob, ingestFiles) ingests and commits at a time (at most max_documents_per_ingest): a restarted job resumes after its last committed batch")
    jobs_at_once: int = Field(2, ge=1, description="Jobs one replica runs at once; the others wait QUEUED")
    job_max_errors: int = Field(1_000, ge=1, description="Per-document errors a job keeps (the counts go on past it)")
    reindex_retire_seconds: float = Field(30.0, ge=0, description="After reindexCollection switches a collection to its new version, how long the previous version's vectors stay (searches that began just before the switch finish on them), then they are removed")


class VectorSettings(BaseModel):
    """Defaults for new collections (createCollection `layout` overrides them per collection)."""

    shard_number: int = Field(1, description="Qdrant server: shards per collection (spread over the cluster's nodes)")
    replication_factor: int = Field(1, description="Qdrant server: copies of each shard")
    write_consistency_factor: int = Field(1, description="Qdrant server: replicas that must acknowledge a write")
    read_consistency: str = Field("1", description="Qdrant server: replicas that answer a search (`1`, `majority`, `quorum`, `all`)")
    on_disk_vectors: bool = Field(False, description="Keep original vectors on disk (with int8, the codes stay in RAM)")
    on_disk_payload: bool = Field(True, description="Keep payloads on disk")
    quantization: Literal["none", "int8"] = Field("none", description="`int8`: scalar quantization, searches rescored on the originals")
    hnsw_m: int = Field(16, ge=0, description="Qdrant Edge: links per point of the HNSW graph (Qdrant's default; 0: never build one, search exactly)")
    hnsw_ef_construct: int = Field(100, ge=4, description="Qdrant Edge: candidates while the HNSW graph is built (Qdrant's default)")
    hnsw_ef: int = Field(128, ge=1, description="Qdrant Edge: candidates a search through the graph looks at (more: better recall, slower)")
    exact_below_points: int = Field(20_000, ge=0, description="Qdrant Edge: a collection with fewer points is searched exactly and gets no graph; larger ones get one built in the background")


class GrpcSettings(BaseModel):
    """The gRPC transport (citadel.v1.Citadel, docs/grpc.md), served beside HTTP by the same process."""

    enabled: bool = Field(False, description="Serve gRPC (app/grpc/citadel/v1/citadel.proto) beside HTTP, in the same process and event loop")
    host: str | None = Field(None, description="gRPC bind address (unset: CITADEL_SERVER__HOST)")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port (0: any free port, logged at startup)")


def _default_data_dir() -> Path:
    return Path(user_data_dir("citadel", appauthor=False))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CITADEL_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    data_dir: Path = Field(default_factory=_default_data_dir, description="Where embedded servers, shards and models live")
    cache_dir: Path | None = Field(None, description="Model cache (default `$HF_HOME/citadel` when HF_HOME is set, else `<data_dir>/models`)")
    database_url: str | None = Field(None, description="PostgreSQL URL; unset: embedded PostgreSQL")
    redis_url: str | None = Field(None, description="Redis URL; unset: embedded Redis")
    qdrant_url: str | None = Field(None, description="Qdrant URL (REST or gRPC); unset: embedded Qdrant Edge")
    qdrant_api_key: str | None = Field(None, description="Qdrant API key")
    default_model: str = Field(BUILTIN_DEFAULT_MODEL, description="Model used when a request names none (its fallback while it cannot be had)")
    default_reranker: str = Field(BUILTIN_DEFAULT_RERANKER, description="Cross-encoder that `rerank`, /v1/rerank, /rerank and `search(rerank:)` use when a request names none")
    models: dict[str, ModelSpec] = Field(default_factory=builtin_catalog, description="Model catalog (JSON); entries extend the built-in one")
    load_models_at_startup: bool = Field(True, description="Prepare the default model in the background at startup")
    run_migrations: bool = Field(True, description="Apply database migrations at startup")
    replica_id: str | None = Field(None, description="This replica's name in events and `Model.replicas` (default `<host name>:<port>`)")
    replica_heartbeat_seconds: float = Field(5.0, description="How often a replica says it is alive; one silent for 3 beats drops out of `replicas`")
    redis_namespace: str | None = Field(None, description="Prefix of every Redis channel and key (default: a short hash of the database, so two clusters on one Redis never mix)")

    server: ServerSettings = Field(default_factory=ServerSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    downloads: DownloadSettings = Field(default_factory=DownloadSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    vectors: VectorSettings = Field(default_factory=VectorSettings)
    grpc: GrpcSettings = Field(default_factory=GrpcSettings)

    # Standard variables of the ecosystem, honoured as they are (no prefix).
    hf_endpoint: str = Field(default_factory=lambda: os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    hf_offline: bool = Field(
        default_factory=lambda: os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    )
    hf_home: Path | None = Field(default_factory=lambda: Path(os.environ["HF_HOME"]) if os.environ.get("HF_HOME") else None)

    @field_validator("models", mode="before")
    @classmethod
    def _merge_catalog(cls, value: object) -> object:
        # Entries given in the environment extend the built-in catalog rather than replace it.
        if isinstance(value, dict):
            merged: dict[str, object] = {k: v.model_dump() for k, v in builtin_catalog().items()}
            for key, spec in value.items():
                if isinstance(spec, dict):
                    spec = {"name": key, **spec}
                merged[key] = spec
            return merged
        return value

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        if self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not in the model catalog")
        if self.models[self.default_model].is_reranker:
            raise ValueError(f"default_model {self.default_model!r} is a reranker, not an embedding model")
        if self.default_reranker not in self.models or not self.models[self.default_reranker].is_reranker:
            raise ValueError(f"default_reranker {self.default_reranker!r} is not a reranker (task: rerank) of the model catalog")
        for spec in self.models.values():
            if spec.fallback and spec.fallback not in self.models:
                raise ValueError(f"fallback {spec.fallback!r} of {spec.name!r} is not in the catalog")
        return self

    @property
    def model_cache_dir(self) -> Path:
        # HF_HOME is where an operator has put model files for every Hugging Face tool: honour it.
        if self.cache_dir:
            return self.cache_dir
        return self.hf_home / "citadel" if self.hf_home else self.data_dir / "models"

    @property
    def largest_ingest_bytes(self) -> int:
        """The body of the largest ingest the limits allow: every document at its longest text (4
        UTF-8 bytes a character at worst) and metadata, plus 1 MiB for the rest."""
        limits = self.limits
        per_document = limits.max_text_chars * 4 + limits.max_metadata_bytes
        return limits.max_documents_per_ingest * per_document + (1 << 20)

    @property
    def request_body_limit(self) -> int:
        """The largest request body: the configured one, or (0) room for the largest ingest."""
        return self.server.max_body_bytes or self.largest_ingest_bytes

    @property
    def replica(self) -> str:
        return self.replica_id or f"{socket.gethostname()}:{self.server.port}"

    @property
    def namespace(self) -> str:
        """The Redis namespace: set, or derived from the database this cluster shares."""
        if self.redis_namespace:
            return self.redis_namespace
        if self.database_url:
            parts = urlsplit(self.database_url)
            identity = f"postgresql://{parts.hostname}:{parts.port or 5432}{parts.path}"
        else:
            identity = f"embedded:{self.data_dir.resolve()}"
        return hashlib.sha256(identity.encode()).hexdigest()[:12]

    def redis_key(self, *parts: str) -> str:
        """A Redis key or channel inside this cluster's namespace, e.g. redis_key("ratelimit", key_id)."""
        return ":".join(("citadel", self.namespace, *parts))

    @property
    def embedding_key_prefix(self) -> str:
        return self.cache.key_prefix if self.cache.key_prefix is not None else self.redis_key("emb") + ":"

    @property
    def auth_required(self) -> bool:
        if self.auth.required is not None:
            return self.auth.required
        return not is_loopback(self.server.host)

    @property
    def embedded_postgres(self) -> bool:
        return not self.database_url

    @property
    def embedded_redis(self) -> bool:
        return not self.redis_url

    @property
    def embedded_qdrant(self) -> bool:
        return not self.qdrant_url

    def model(self, name: str | None) -> ModelSpec:
        from app.errors import NotFound

        key = name or self.default_model
        try:
            return self.models[key]
        except KeyError:
            raise NotFound(f"unknown model {key!r}; known: {', '.join(sorted(self.models))}", model=key) from None
