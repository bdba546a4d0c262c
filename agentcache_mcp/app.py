"""The composition root: settings in, a MemoryService over the backend AGENTCACHE_DB names, out."""

from __future__ import annotations

from .backends.sqlite import SqliteBackend
from .config import Settings, default_db_path
from .embeddings import Embedder, SentenceTransformerEmbedder
from .memory.forgetting import AutoForgetPolicy
from .memory.fusion import FusionParams
from .memory.ports import StorageBackend, StoreUnavailable
from .memory.service import MemoryService, ServiceLimits


def open_backend(settings: Settings, model_id: str, *, max_page_count: int | None = None) -> StorageBackend:
    """The store AGENTCACHE_DB / --db names: a postgresql:// URL selects PostgreSQL, anything else is a SQLite
    file path."""
    if settings.database_url is not None:
        try:
            from .backends.postgres import PostgresBackend
        except ImportError as exc:
            raise StoreUnavailable(
                f"AGENTCACHE_DB / --db names a PostgreSQL database, but the PostgreSQL driver is not installed "
                f"({exc.name or exc}): pip install 'agentcache-mcp[postgres]'"
            ) from None
        return PostgresBackend(
            settings.database_url,
            model_id,
            pool_size=settings.pg_pool_size,
            erase=settings.pg_erase,
            erase_at=settings.pg_erase_at,
            vector_search=settings.pg_vector_search,
        )
    return SqliteBackend(
        settings.db_path,
        model_id,
        create_parent=settings.db_path == default_db_path(),
        max_page_count=max_page_count,
    )


def open_memory(
    settings: Settings,
    *,
    embedder: Embedder | None = None,
    fusion: FusionParams | None = None,
    max_page_count: int | None = None,
) -> MemoryService:
    embedder = embedder or SentenceTransformerEmbedder(settings.embedding_model, batch_size=settings.embed_batch_size)
    return MemoryService(
        open_backend(settings, embedder.model_id, max_page_count=max_page_count),
        embedder,
        limits=ServiceLimits(
            namespace=settings.namespace,
            max_text_bytes=settings.max_text_bytes,
            embed_batch_size=settings.embed_batch_size,
            model_wait_s=settings.model_wait_s,
            embedding_lease_s=settings.embedding_lease_s,
        ),
        policy=AutoForgetPolicy(
            duplicate_cosine=settings.duplicate_cosine,
            low_importance=settings.low_importance,
            low_importance_age_days=settings.low_importance_age_days,
        ),
        fusion=fusion,
    )
