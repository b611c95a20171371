"""Everything a request may need, built once by the lifespan and shared by all requests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.settings import Settings

if TYPE_CHECKING:  # annotations only: checkers and readers see the real classes, and no import cycle can start here
    from redis.asyncio import Redis

    from app.adapters.postgres import PostgresRepo
    from app.domain.vectors import VectorStore
    from app.inference.pool import ModelPool
    from app.services.catalog import ModelCatalog
    from app.services.collections import CollectionService
    from app.services.documents import DocumentService
    from app.services.embedding import EmbeddingService
    from app.services.health import HealthService
    from app.services.ingest import IngestService
    from app.services.jobs import JobService
    from app.services.keys import KeyService
    from app.services.models import ModelManager
    from app.services.reconciler import Reconciler
    from app.services.replicas import ClusterView
    from app.services.rate_limit import RateLimiter
    from app.services.rerank import RerankService
    from app.services.search import SearchService


@dataclass
class Services:
    settings: Settings
    repo: PostgresRepo
    store: VectorStore
    redis: Redis
    pool: ModelPool
    models: ModelManager
    cluster: ClusterView  # every live replica's state of each model
    embedder: EmbeddingService
    collections: CollectionService
    ingest: IngestService
    search: SearchService
    health: HealthService
    reconciler: Reconciler
    documents: DocumentService
    keys: KeyService
    limiter: RateLimiter
    catalog: ModelCatalog
    reranker: RerankService  # cross-encoders: rerank, /v1/rerank, /rerank, search(rerank:)
    jobs: JobService  # background ingests: startIngestJob, ingestFiles, cancelJob, job(s), jobProgress
