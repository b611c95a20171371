"""Pick the vector store for the settings: a Qdrant server when a URL is set, else Qdrant Edge."""

from __future__ import annotations

from loguru import logger

from app.domain.vectors import VectorStore
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
    return QdrantEdgeStore(base)
