"""The memory engine: remember, recall, forget over the store, the keyword index and the vector index.

Everything here is synchronous and thread-safe; the MCP server calls it from worker threads, tests and
benchmarks call it directly. Background work (embedding, sync, auto-forget) lives in workers.py and uses
the public methods below.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .config import Settings, default_db_path
from .embeddings import Embedder, EmbeddingModelError, SentenceTransformerEmbedder
from .forgetting import AutoForgetReport, ForgetResult, auto_forget, forget
from .recall import FusionParams, fuse, match_expression, query_terms, smooth_with_neighbours
from .recall import ranked as ranked_list
from .store import Filters, MemoryRow, Store
from .validation import (
    InvalidInput,
    validate_importance,
    validate_limit,
    validate_metadata,
    validate_namespace,
    validate_positive_days,
    validate_query,
    validate_tags,
    validate_text,
)
from .vectors import Vector, VectorIndex, from_blob, to_blob

log = logging.getLogger(__name__)

DAY = 86_400.0


@dataclass(slots=True)
class RememberResult:
    id: str
    namespace: str
    deduplicated: bool


@dataclass(slots=True)
class Hit:
    id: str
    text: str
    namespace: str
    tags: list[str]
    importance: float
    metadata: dict[str, Any]
    created_at: str
    score: float


@dataclass(slots=True)
class IndexReport:
    memories: int
    pending_embeddings: int
    vectors_loaded: int
    fts_rebuilt: bool
    seconds: float


@dataclass(slots=True)
class IndexState:
    vectors: int = 0
    loaded: bool = False
    last_change_seq: int = 0
    fts_ok: bool | None = None
    notes: list[str] = field(default_factory=list)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: object, name: str) -> float | None:
    """An ISO 8601 date or date-time (UTC if no offset), a datetime, or epoch seconds."""
    if value is None:
        return None
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInput(f"{name} must be an ISO 8601 date or date-time, e.g. 2026-01-31T12:00:00Z") from None
    else:
        raise InvalidInput(f"{name} must be an ISO 8601 date or date-time string")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


class MemoryEngine:
    def __init__(
        self,
        settings: Settings,
        *,
        embedder: Embedder | None = None,
        fusion: FusionParams | None = None,
        max_page_count: int | None = None,
    ):
        self.settings = settings
        self.store = Store(
            settings.db_path,
            create_parent=settings.db_path == default_db_path(),
            max_page_count=max_page_count,
        )
        self.embedder: Embedder = embedder or SentenceTransformerEmbedder(
            settings.embedding_model, batch_size=settings.embed_batch_size
        )
        self.fusion = fusion or FusionParams()
        self.vectors: VectorIndex | None = None
        self.index_state = IndexState()
        self._sync_lock = threading.Lock()
        self._seen_seq = 0
        self.on_remember: list[Any] = []
        """Callbacks run after each new memory is committed (the embedding writer's wake-up)."""

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
        text = validate_text(text, self.settings.max_text_bytes)
        namespace = validate_namespace(namespace or self.settings.namespace)
        clean_tags = validate_tags(tags)
        importance = validate_importance(importance)
        ttl = validate_positive_days(ttl_days, "ttl_days")
        clean_metadata = validate_metadata(metadata)
        now = time.time()
        memory_id, deduplicated = self.store.insert_or_merge(
            namespace=namespace,
            text=text,
            tags=clean_tags,
            importance=importance,
            metadata=clean_metadata,
            expires_at=None if ttl is None else now + ttl * DAY,
            now=now,
        )
        if not deduplicated:
            for callback in self.on_remember:
                callback()
        return RememberResult(memory_id, namespace, deduplicated)

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
        query = validate_query(query, self.settings.max_text_bytes)
        namespace = validate_namespace(namespace or self.settings.namespace)
        filters = Filters(validate_tags(tags), parse_time(since, "since"), parse_time(until, "until"))
        limit = validate_limit(limit)
        fusion = fusion or self.fusion
        now = time.time()

        keyword: dict[int, float] = {}
        terms = query_terms(query) if fusion.method != "vector" else []
        if terms and fusion.context_weight > 0:
            terms = self.store.informative_terms(terms)
        match = match_expression(terms)
        if match is not None:
            keyword = dict(
                self.store.keyword_search(
                    namespace, match, max(fusion.candidates, limit), filters, now, fusion.context_weight
                )
            )
        query_vector = self._query_vector(query) if fusion.method != "keyword" else None
        vector: dict[int, float] = {}
        if query_vector is not None:
            vector = dict(self._vector_candidates(query_vector, namespace, filters, max(fusion.candidates, limit), now))
            if fusion.method != "vector":
                vector.update(self._cosines(query_vector, namespace, [pk for pk in keyword if pk not in vector]))

        scores = fuse(keyword, vector, fusion)
        width = len(fusion.neighbour_weights)
        if width and scores:
            top = dict(ranked_list(scores)[: max(fusion.rerank_depth, limit)])
            neighbours = self.store.neighbours(namespace, list(top), width)
            adjacent = {
                pk for pairs in neighbours.values() for pair in pairs for pk in pair if pk is not None and pk not in top
            }
            live = self.store.live_pks(namespace, list(adjacent), filters, now)
            if query_vector is not None and live:
                extra = {
                    pk: s for pk, s in self._cosines(query_vector, namespace, list(live)).items() if pk not in scores
                }
                vector.update(extra)
                scores = fuse(keyword, vector, fusion)
            neighbours.update(self.store.neighbours(namespace, list(live), width))
            scores = smooth_with_neighbours(scores, neighbours, fusion.neighbour_weights)
        ranking = ranked_list(scores)[:limit]
        rows = self.store.get_by_pks([pk for pk, _ in ranking])
        hits = [_hit(rows[pk], score) for pk, score in ranking if pk in rows]
        if touch and hits:
            self.store.touch([pk for pk, _ in ranking if pk in rows], now)
        return hits

    def _query_vector(self, query: str) -> Vector | None:
        if not self.embedder.ready:
            return None  # the model is still loading (or failed): keyword results only
        self.sync_vectors()
        if self.vectors is None:
            return None
        try:
            return self.embedder.embed([query])[0]
        except EmbeddingModelError:
            return None

    def _cosines(self, query_vector: Vector, namespace: str, pks: list[int]) -> dict[int, float]:
        if self.vectors is None or not pks:
            return {}
        return self.vectors.scores_for(namespace, query_vector, pks)

    def _vector_candidates(
        self, query_vector: Vector, namespace: str, filters: Filters, k: int, now: float
    ) -> list[tuple[int, float]]:
        assert self.vectors is not None
        if filters.active:
            extra, params = filters.sql()
            allowed = {
                pk
                for pk, _ in self.store.select_pks(
                    "m.namespace = ? AND m.superseded_by IS NULL AND (m.expires_at IS NULL OR m.expires_at > ?)"
                    + extra,
                    [namespace, now, *params],
                )
            }
            return self.vectors.search(namespace, query_vector, k, allowed)
        # Over-fetch, then drop what a recall may not return (superseded, expired): both are rare.
        found = self.vectors.search(namespace, query_vector, k * 2)
        live = self.store.live_pks(namespace, [pk for pk, _ in found], filters, now)
        return [(pk, s) for pk, s in found if pk in live][:k]

    # -- forget

    def forget(
        self,
        ids: list[str] | None = None,
        namespace: str | None = None,
        tags: list[str] | None = None,
        older_than_days: float | None = None,
        dry_run: bool | None = None,
    ) -> ForgetResult:
        result = forget(
            self.store, ids=ids, namespace=namespace, tags=tags, older_than_days=older_than_days, dry_run=dry_run
        )
        if result.deleted and not result.dry_run:
            self.sync_vectors()
        return result

    def auto_forget(self, dry_run: bool = False, now: float | None = None) -> AutoForgetReport:
        self.sync_vectors()
        report = auto_forget(self.store, self.vectors, self.settings, self.embedder.model_id, dry_run=dry_run, now=now)
        if not dry_run:
            self.sync_vectors()
        return report

    # -- embeddings and the vector index

    def embed_pending(self, batch_size: int | None = None, max_batches: int | None = None) -> int:
        """Embed memories that have no vector from the current model; returns how many were written."""
        batch_size = batch_size or self.settings.embed_batch_size
        written = 0
        batches = 0
        after = 0
        while max_batches is None or batches < max_batches:
            pending = self.store.pending_embeddings(self.embedder.model_id, batch_size, after)
            if not pending:
                break
            vectors = self.embedder.embed([text for _, text, _ in pending])
            written += self.store.write_embeddings(
                self.embedder.model_id,
                [(pk, digest, to_blob(v)) for (pk, _, digest), v in zip(pending, vectors, strict=True)],
            )
            after = pending[-1][0]
            batches += 1
        if written:
            self.sync_vectors()
        return written

    def pending_embeddings(self) -> int:
        return self.store.count_pending_embeddings(self.embedder.model_id)

    def load_vectors(self) -> int:
        """(Re)build the in-memory index from the embeddings stored for the current model."""
        with self._sync_lock:
            seq = self.store.last_change()
            index: VectorIndex | None = None
            for batch in self.store.iter_embeddings(self.embedder.model_id):
                if index is None:
                    index = VectorIndex(len(batch[0][2]) // 4)  # float32 blobs
                index.add_batch(batch)
            self.vectors = index
            self._seen_seq = seq
            self.index_state.loaded = True
            self.index_state.vectors = len(index) if index else 0
            self.index_state.last_change_seq = seq
            return self.index_state.vectors

    def sync_vectors(self) -> None:
        """Replay the change log: vectors other processes (or our workers) wrote or deleted since last time."""
        if not self.index_state.loaded:
            self.load_vectors()
            return
        with self._sync_lock:
            while True:
                changes, complete = self.store.changes_since(self._seen_seq)
                if not complete:
                    break
                if not changes:
                    self.index_state.last_change_seq = self._seen_seq
                    self.index_state.vectors = len(self.vectors) if self.vectors else 0
                    return
                embedded = [c.pk for c in changes if c.op == "embed"]
                fresh = {pk: (ns, blob) for pk, ns, blob in self.store.embeddings_for(self.embedder.model_id, embedded)}
                for change in changes:
                    if change.op == "delete":
                        if self.vectors is not None:
                            self.vectors.remove(change.pk)
                    elif change.op == "embed":
                        if change.pk in fresh:
                            ns, blob = fresh[change.pk]
                            vector = from_blob(blob)
                            if self.vectors is None:
                                self.vectors = VectorIndex(len(vector))
                            self.vectors.upsert(change.pk, ns, vector)
                        elif self.vectors is not None:
                            self.vectors.remove(change.pk)  # re-embedded by another model, or deleted since
                self._seen_seq = changes[-1].seq
        # The log was pruned past what we had seen: rebuild from the store.
        log.info("change log pruned past seq %d; reloading the vector index", self._seen_seq)
        self.load_vectors()

    def verify_index(self, rebuild: bool = True) -> IndexReport:
        """The origin's verify_index_sync_on_boot: check FTS and vectors against the store, repair what is off."""
        started = time.monotonic()
        fts_rebuilt = False
        fts_ok = self.store.fts_ok()
        if not fts_ok and rebuild:
            log.warning("keyword index is out of sync with the store; rebuilding it")
            self.store.rebuild_fts()
            fts_rebuilt = True
            fts_ok = self.store.fts_ok()
        self.index_state.fts_ok = fts_ok
        loaded = self.load_vectors()
        return IndexReport(
            memories=sum(self.store.counts_by_namespace().values()),
            pending_embeddings=self.pending_embeddings(),
            vectors_loaded=loaded,
            fts_rebuilt=fts_rebuilt,
            seconds=time.monotonic() - started,
        )

    # -- stats and lifecycle

    def stats(self) -> dict[str, Any]:
        namespaces = self.store.counts_by_namespace()
        error = getattr(self.embedder, "error", None)
        return {
            "memories": sum(namespaces.values()),
            "namespaces": namespaces,
            "pending_embeddings": self.pending_embeddings(),
            "embedding_model": self.embedder.model_id,
            "db_path": str(self.settings.db_path),
            "index": {
                "keyword": "fts5 (in the database, always current)",
                "vectors_loaded": len(self.vectors) if self.vectors else 0,
                "vector_index_loaded": self.index_state.loaded,
                "embedding_model_ready": self.embedder.ready,
                "embedding_model_error": str(error) if error else None,
                "fts_ok": self.index_state.fts_ok,
                "last_change_seq": self.index_state.last_change_seq,
                "schema_version": self.store.schema_version,
            },
        }

    def close(self, checkpoint: bool = True) -> None:
        if checkpoint:
            try:
                self.store.checkpoint()
            except Exception:
                log.exception("WAL checkpoint failed")
        self.store.close()


def _hit(row: MemoryRow, score: float) -> Hit:
    return Hit(
        id=row.id,
        text=row.text,
        namespace=row.namespace,
        tags=row.tags,
        importance=row.importance,
        metadata=row.metadata,
        created_at=iso(row.created_at),
        score=round(float(score), 6),
    )
