"""Everything a request may need, built once by the lifespan and shared by all requests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.settings import Settings


@dataclass
class Services:
    settings: Settings
    repo: Any  # app.adapters.postgres.PostgresRepo
    store: Any  # app.domain.vectors.VectorStore
    redis: Any  # redis.asyncio.Redis
    pool: Any  # app.inference.pool.ModelPool
    models: Any  # app.services.models.ModelManager
    embedder: Any  # app.services.embedding.EmbeddingService
    collections: Any  # app.services.collections.CollectionService
    ingest: Any  # app.services.ingest.IngestService
    search: Any  # app.services.search.SearchService
    health: Any  # app.services.health.HealthService
    reconciler: Any  # app.services.reconciler.Reconciler
    documents: Any = None  # app.services.documents.DocumentService
    keys: Any = None  # app.services.keys.KeyService
    limiter: Any = None  # app.services.rate_limit.RateLimiter
    catalog: Any = None  # app.services.catalog.ModelCatalog
