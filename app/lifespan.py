"""Start everything in a fixed order and stop it in reverse (one AsyncExitStack).

Order: data dir -> PostgreSQL (embedded or URL) + migrations -> Redis -> vector store ->
event bus (+ Redis bridge) -> model pool -> model manager -> cluster view -> embedding service ->
domain services -> reconciler -> key revocation listener -> job events (+ Redis bridge) and jobs
(this replica's unfinished ones resumed). Teardown runs backwards, so nothing outlives what it depends on.
"""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager
from typing import AsyncIterator

import redis.asyncio as aioredis
from loguru import logger

from app.adapters.api_keys import ApiKeyRepo
from app.adapters.events import EventBus
from app.adapters.job_events import JobEventBus
from app.adapters.postgres import PostgresRepo
from app.adapters.postgres_jobs import PostgresJobRepo
from app.adapters.postgres_pool import create_pool
from app.adapters.postgres_replicas import PostgresReplicaStore
from app.adapters.redis_events import RedisEventBridge
from app.adapters.redis_cache import EmbeddingCache
from app.adapters.vector_store import open_vector_store
from app.inference.pool import ModelPool
from app.services.catalog import ModelCatalog
from app.services.collections import CollectionService
from app.services.container import Services
from app.services.documents import DocumentService
from app.services.embedding import EmbeddingService
from app.services.health import HealthService
from app.services.ingest import IngestService
from app.services.jobs import JobService
from app.services.reindex import Reindexer
from app.services.key_revocations import RevocationListener, revocation_channel
from app.services.keys import KeyService
from app.domain.jobs import Job
from app.services.models import ModelManager
from app.services.rate_limit import RateLimiter
from app.services.reconciler import Reconciler
from app.services.replicas import ClusterView
from app.services.schema_upgrader import SchemaUpgrader
from app.services.rerank import RerankService
from app.services.search import SearchService
from app.startup_checks import check_admin_reachable
from app.settings import Settings
from app.urls import mask_url


@asynccontextmanager
async def open_services(settings: Settings) -> AsyncIterator[Services]:
    async with AsyncExitStack() as stack:
        settings.data_dir.mkdir(parents=True, exist_ok=True)

        database_url, redis_url = settings.database_url, settings.redis_url
        if settings.embedded_postgres:
            from app.adapters.embedded import EmbeddedPostgres

            database_url = (await stack.enter_async_context(EmbeddedPostgres(settings.data_dir))).url
        upgrader = SchemaUpgrader(database_url)
        if settings.run_migrations:
            await upgrader.start()
            stack.push_async_callback(upgrader.stop)
        else:
            upgrader.done = True
        # min_size=0: no connection is needed to start, so an outage degrades instead of crashing.
        pg_pool = await create_pool(database_url, min_size=0)
        stack.push_async_callback(pg_pool.close)
        repo = PostgresRepo(pg_pool)
        replica_store = PostgresReplicaStore(pg_pool)
        keys_repo = ApiKeyRepo(pg_pool)
        await check_admin_reachable(settings, keys_repo)  # before any background work starts

        if settings.embedded_redis:
            from app.adapters.embedded import EmbeddedRedis

            embedded = EmbeddedRedis(settings.data_dir, max_memory_mb=settings.cache.max_memory_mb)
            redis_url = (await stack.enter_async_context(embedded)).url
        redis = aioredis.from_url(redis_url)
        stack.push_async_callback(redis.aclose)

        store = open_vector_store(settings)
        stack.push_async_callback(store.close)

        bus = EventBus()
        stack.push_async_callback(bus.close)
        bridge = RedisEventBridge(bus, redis, settings.redis_key("model-events"))
        try:
            await bridge.start()
        except Exception as exc:  # no Redis: this replica's events stay local, it does not crash
            logger.warning("download events stay on this replica: Redis pub/sub unavailable ({})", exc)
        stack.push_async_callback(bridge.close)

        pool = ModelPool(settings)
        stack.push_async_callback(pool.close)

        models = ModelManager(
            settings, loader=pool.load, bus=bus, persist=replica_store.save_model_status, lock=replica_store
        )
        stack.push_async_callback(models.close)
        cluster = ClusterView(
            settings.replica, bus, models.statuses, settings.models, replica_store, settings.replica_heartbeat_seconds
        )
        await models.start()
        await cluster.start()
        stack.push_async_callback(cluster.close)
        logger.info("replica {} (Redis namespace {})", settings.replica, settings.namespace)

        cache = (
            EmbeddingCache(redis, settings.cache, key_prefix=settings.embedding_key_prefix)
            if settings.cache.enabled
            else None
        )
        embedder = EmbeddingService(settings, pool, cache, models)
        collections = CollectionService(settings, repo, store, models)
        ingest = IngestService(settings, repo, store, embedder, models)
        reranker = RerankService(settings, pool, models, embedder)
        search = SearchService(settings, repo, store, embedder, models, reranker)

        reconciler = Reconciler(
            repo, store, embedder, settings.ingest.reconcile_interval_seconds, settings=settings, models=models
        )
        reconciler.start()
        stack.push_async_callback(reconciler.stop)

        keys = KeyService(settings, keys_repo, redis)
        revocations = RevocationListener(redis, keys, revocation_channel(settings))
        revocations.start()
        stack.push_async_callback(revocations.stop)

        job_bus = JobEventBus()
        stack.push_async_callback(job_bus.close)
        job_bridge = RedisEventBridge(job_bus, redis, settings.redis_key("job-events"), decode=Job.from_json)
        try:
            await job_bridge.start()
        except Exception as exc:  # no Redis: job events stay on this replica
            logger.warning("job events stay on this replica: Redis pub/sub unavailable ({})", exc)
        stack.push_async_callback(job_bridge.close)
        reindexer = Reindexer(settings, repo, store, embedder, models)
        jobs = JobService(settings, PostgresJobRepo(pg_pool), repo, ingest, embedder, keys, job_bus, models, reindexer)
        await jobs.start()
        jobs.watch_orphans(cluster.ttl_seconds)  # a replica silent this long is gone: its jobs go on here
        stack.push_async_callback(jobs.close)

        health = HealthService(
            {
                "postgres": ("embedded" if settings.embedded_postgres else mask_url(database_url), both(upgrader.check, repo.ping)),
                "redis": ("embedded" if settings.embedded_redis else mask_url(redis_url), redis.ping),
                "qdrant": ("embedded (Qdrant Edge)" if settings.embedded_qdrant else mask_url(settings.qdrant_url or ""), store.ping),
            }
        )
        yield Services(
            settings=settings,
            repo=repo,
            store=store,
            redis=redis,
            pool=pool,
            models=models,
            cluster=cluster,
            embedder=embedder,
            collections=collections,
            ingest=ingest,
            search=search,
            health=health,
            reconciler=reconciler,
            documents=DocumentService(settings, repo),
            keys=keys,
            limiter=RateLimiter(redis, settings.auth.burst_seconds, key_prefix=settings.redis_key("rate") + ":"),
            catalog=ModelCatalog(settings, models, health, cluster),
            reranker=reranker,
            jobs=jobs,
        )
        logger.info("shutting down")


def both(*probes):
    """One health probe made of several checks, run in order."""

    async def probe() -> None:
        for check in probes:
            await check()

    return probe
