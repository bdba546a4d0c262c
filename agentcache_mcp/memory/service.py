"""MemoryService: remember, recall, forget, auto-forget and stats - what the tools, the CLI and tests call.

Synchronous and thread-safe; the MCP server calls it from worker threads. It holds the rules (validation,
what re-remembering does, what a forget may touch) and speaks to storage only through the ports.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..embeddings import Embedder, EmbeddingModelError
from .forgetting import AutoForgetPolicy, AutoForgetReport, auto_forget, forget
from .fusion import FusionParams
from .model import (
    DAY,
    ForgetResult,
    Hit,
    Memory,
    MemoryFilter,
    MemoryUpdate,
    NewMemory,
    RememberResult,
    content_hash,
    iso,
    new_id,
)
from .ports import StorageBackend, Vector
from .recall import RecallRequest
from .recall import recall as run_recall
from .validation import (
    MAX_METADATA_KEYS,
    MAX_TAGS,
    InvalidInput,
    parse_time,
    validate_ids,
    validate_importance,
    validate_limit,
    validate_metadata,
    validate_namespace,
    validate_positive_days,
    validate_query,
    validate_tags,
    validate_text,
)

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class ServiceLimits:
    namespace: str = "default"
    """The namespace of every call that names none."""
    max_text_bytes: int = 32 * 1024
    embed_batch_size: int = 64


@dataclass(slots=True)
class IndexReport:
    memories: int
    pending_embeddings: int
    vectors_loaded: int
    fts_rebuilt: bool
    seconds: float


def merge_remembered(existing: Memory, new: NewMemory) -> MemoryUpdate:
    """Remembering the same text again never shortens a life nor lowers importance, and stays in the limits:
    the later expiry wins (none beats any), the higher importance wins, tags and metadata are merged (refused
    if the merge would pass a limit), and a superseded memory is live again."""
    tags = list(dict.fromkeys([*existing.tags, *new.tags]))
    if len(tags) > MAX_TAGS:
        raise InvalidInput(
            f"this text is already memory {existing.id} with {len(existing.tags)} tags; adding these would make "
            f"{len(tags)}, over the limit of {MAX_TAGS}: remember it with fewer new tags"
        )
    metadata = {**existing.metadata, **new.metadata}
    if len(metadata) > MAX_METADATA_KEYS:
        raise InvalidInput(
            f"this text is already memory {existing.id} with {len(existing.metadata)} metadata keys; adding these "
            f"would make {len(metadata)}, over the limit of {MAX_METADATA_KEYS}"
        )
    if existing.expires_at is None or new.expires_at is None:
        expires_at = None
    else:
        expires_at = max(existing.expires_at, new.expires_at)
    return MemoryUpdate(
        tags=tags,
        importance=max(existing.importance, new.importance),
        metadata=metadata,
        updated_at=new.created_at,
        expires_at=expires_at,
        superseded_by=None,
    )


class MemoryService:
    def __init__(
        self,
        backend: StorageBackend,
        embedder: Embedder,
        *,
        limits: ServiceLimits | None = None,
        policy: AutoForgetPolicy | None = None,
        fusion: FusionParams | None = None,
    ):
        self.backend = backend
        self.embedder = embedder
        self.limits = limits or ServiceLimits()
        self.policy = policy or AutoForgetPolicy(duplicate_cosine=0.95, low_importance=0.2, low_importance_age_days=180)
        self.fusion = fusion or FusionParams()
        self.keyword_index_ok: bool | None = None
        self.on_remember: list[Callable[[], None]] = []
        """Callbacks run after each new memory is committed (the embedding writer's wake-up)."""
        self._accesses: dict[int, tuple[int, float]] = {}
        self._accesses_lock = threading.Lock()

    def _namespace(self, namespace: str | None) -> str:
        return validate_namespace(self.limits.namespace if namespace is None else namespace)

    # -- remember

    def remember(
        self,
        text: str,
        namespace: str | None = None,
        tags: list[str] | None = None,
        importance: float = 0.5,
        ttl_days: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> RememberResult:
        text = validate_text(text, self.limits.max_text_bytes)
        namespace = self._namespace(namespace)
        clean_tags = validate_tags(tags)
        importance = validate_importance(importance)
        ttl = validate_positive_days(ttl_days, "ttl_days")
        clean_metadata = validate_metadata(metadata)
        now = time.time()
        new = NewMemory(
            id=new_id(),
            namespace=namespace,
            text=text,
            content_hash=content_hash(text),
            tags=clean_tags,
            importance=importance,
            metadata=clean_metadata,
            created_at=now,
            expires_at=None if ttl is None else now + ttl * DAY,
        )
        stored, merged = self.backend.memories.remember(new, merge_remembered)
        if not merged:
            for callback in self.on_remember:
                callback()
        return RememberResult(stored.id, namespace, merged)

    # -- recall

    def recall(
        self,
        query: str,
        namespace: str | None = None,
        tags: list[str] | None = None,
        limit: int = 10,
        since: object = None,
        until: object = None,
        *,
        fusion: FusionParams | None = None,
        touch: bool = True,
    ) -> list[Hit]:
        query = validate_query(query, self.limits.max_text_bytes)
        namespace = self._namespace(namespace)
        now = time.time()
        where = MemoryFilter(
            namespace=namespace,
            tags=tuple(validate_tags(tags)),
            created_since=parse_time(since, "since"),
            created_until=parse_time(until, "until", end_of_day=True),
            live_at=now,
        )
        request = RecallRequest(query, where, validate_limit(limit))
        fusion = fusion or self.fusion
        query_vector = self._query_vector(query) if fusion.method != "keyword" else None
        ranked = run_recall(self.backend, request, query_vector, fusion)
        if touch and ranked:
            self._record_access([m.key for m, _ in ranked], now)
        return [_hit(m, score) for m, score in ranked]

    def _query_vector(self, query: str) -> Vector | None:
        if not self.embedder.ready:
            return None  # the model is still loading (or failed): keyword results only
        try:
            return self.embedder.embed([query])[0]
        except EmbeddingModelError:
            return None

    def _record_access(self, keys: list[int], now: float) -> None:
        """Access stats are buffered and written by the background flush: a recall never waits on a disk sync."""
        with self._accesses_lock:
            for key in keys:
                count, _ = self._accesses.get(key, (0, now))
                self._accesses[key] = (count + 1, now)

    def flush_accesses(self) -> int:
        """Write buffered access stats; returns how many memories they touched."""
        with self._accesses_lock:
            pending, self._accesses = self._accesses, {}
        if not pending:
            return 0
        try:
            self.backend.memories.record_access(pending)
        except Exception:
            with self._accesses_lock:  # keep them for the next flush
                for key, (count, last) in pending.items():
                    old_count, old_last = self._accesses.get(key, (0, last))
                    self._accesses[key] = (count + old_count, max(last, old_last))
            raise
        return len(pending)

    # -- read one / browse

    def get(self, ids: list[str], namespace: str | None = None) -> list[Memory]:
        return self.backend.memories.get(self._namespace(namespace), validate_ids(ids))

    # -- forget

    def forget(
        self,
        ids: list[str] | None = None,
        namespace: str | None = None,
        tags: list[str] | None = None,
        older_than_days: float | None = None,
        dry_run: bool | None = None,
    ) -> ForgetResult:
        return forget(
            self.backend.memories,
            namespace=self._namespace(namespace),
            namespace_given=namespace is not None,
            ids=validate_ids(ids),
            tags=validate_tags(tags),
            older_than_days=validate_positive_days(older_than_days, "older_than_days"),
            dry_run=dry_run,
            now=time.time(),
        )

    def auto_forget(self, dry_run: bool = False, now: float | None = None) -> AutoForgetReport:
        self.flush_accesses()  # "unused" must see the latest recalls
        return auto_forget(
            self.backend.memories,
            self.backend.vectors,
            self.backend.embeddings,
            self.policy,
            dry_run=dry_run,
            now=time.time() if now is None else now,
        )

    # -- embeddings and the vector index

    def embed_pending(self, batch_size: int | None = None, max_batches: int | None = None) -> int:
        """Embed memories that have no vector from the current model; returns how many were written."""
        batch_size = batch_size or self.limits.embed_batch_size
        model_id = self.embedder.model_id
        written = batches = after = 0
        while max_batches is None or batches < max_batches:
            pending = self.backend.embeddings.pending(model_id, batch_size, after)
            if not pending:
                break
            vectors = self.embedder.embed([text for _, text, _ in pending])
            written += self.backend.embeddings.write(
                model_id, [(key, digest, v) for (key, _, digest), v in zip(pending, vectors, strict=True)]
            )
            after = pending[-1][0]
            batches += 1
        if written:
            self.backend.vectors.refresh()
        return written

    def pending_embeddings(self) -> int:
        return self.backend.embeddings.count_pending(self.embedder.model_id)

    def load_vectors(self) -> int:
        return self.backend.vectors.load()

    def sync_vectors(self) -> None:
        self.backend.vectors.refresh()

    def verify_index(self, rebuild: bool = True) -> IndexReport:
        """Check the keyword index against the store (rebuild it if off) and load the vectors."""
        started = time.monotonic()
        rebuilt = False
        ok = self.backend.keywords.check()
        if not ok and rebuild:
            log.warning("keyword index is out of sync with the store; rebuilding it")
            self.backend.keywords.rebuild()
            rebuilt = True
            ok = self.backend.keywords.check()
        self.keyword_index_ok = ok
        loaded = self.load_vectors()
        return IndexReport(
            memories=sum(self.backend.memories.counts_by_namespace().values()),
            pending_embeddings=self.pending_embeddings(),
            vectors_loaded=loaded,
            fts_rebuilt=rebuilt,
            seconds=time.monotonic() - started,
        )

    # -- stats and lifecycle

    def stats(self) -> dict[str, Any]:
        namespaces = self.backend.memories.counts_by_namespace()
        error = getattr(self.embedder, "error", None)
        described = self.backend.describe()
        return {
            "memories": sum(namespaces.values()),
            "namespaces": namespaces,
            "pending_embeddings": self.pending_embeddings(),
            "embedding_model": self.embedder.model_id,
            "db_path": described.get("db_path"),
            "index": {
                **{k: v for k, v in described.items() if k != "db_path"},
                "vectors_loaded": len(self.backend.vectors),
                "vector_index_loaded": self.backend.vectors.loaded,
                "embedding_model_ready": self.embedder.ready,
                "embedding_model_error": str(error) if error else None,
                "keyword_index_ok": self.keyword_index_ok,
            },
        }

    def close(self, checkpoint: bool = True) -> None:
        try:
            self.flush_accesses()
        except Exception:
            log.exception("writing access stats at shutdown failed")
        if checkpoint:
            try:
                self.backend.checkpoint()
            except Exception:
                log.exception("checkpoint failed")
        self.backend.close()


def _hit(memory: Memory, score: float) -> Hit:
    return Hit(
        id=memory.id,
        text=memory.text,
        namespace=memory.namespace,
        tags=memory.tags,
        importance=memory.importance,
        metadata=memory.metadata,
        created_at=iso(memory.created_at),
        score=round(float(score), 6),
    )
