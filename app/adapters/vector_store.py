"""Pick the vector store for the settings: a Qdrant server when a URL is set, else Qdrant Edge."""

from __future__ import annotations

from loguru import logger

from app.domain.vectors import AnnIndex, VectorStore
from app.settings import Settings


def open_vector_store(settings: Settings) -> VectorStore:
    """Build (not connect) the store; call `await store.ping()` to check it, `close()` at shutdown."""
    if settings.qdrant_url:
        from app.adapters.qdrant_server import QdrantServerStore

        logger.info("vector store: qdrant server at {}", settings.qdrant_url)
        consistency = settings.vectors.read_consistency
        return QdrantServerStore(
            settings.qdrant_url,
            settings.qdrant_api_key,
            read_consistency=int(consistency) if consistency.isdigit() else consistency,
        )

    from app.adapters.qdrant_edge import QdrantEdgeStore

    base = settings.data_dir / "qdrant"
    logger.info("vector store: qdrant edge under {}", base)
    v = settings.vectors
    index = AnnIndex(m=v.hnsw_m, ef_construct=v.hnsw_ef_construct, hnsw_ef=v.hnsw_ef, exact_below=v.exact_below_points)
    return QdrantEdgeStore(base, index=index)
