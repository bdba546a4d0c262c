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
from .fusion import FusionParams, dense_query_text
from .model import (
    DAY,
    ForgetResult,
    Hit,
    Memory,
    MemoryFilter,
    MemoryUpdate,
    NewMemory,
    RecallOutcome,
    RememberResult,
    content_hash,
    iso,
    new_id,
)
from .ports import StorageBackend, UnknownMemories, Vector
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


CATCH_UP_BATCHES = 2
"""At most this many embedding batches (64 memories each) a recall embeds itself right after the model loads."""


@dataclass(slots=True, frozen=True)
class ServiceLimits:
    namespace: str = "default"
    """The namespace of every call that names none."""
    max_text_bytes: int = 32 * 1024
    embed_batch_size: int = 64
    model_wait_s: float = 30.0
    """How long a recall waits for the embedding model to finish loading before it answers by keyword only
    (and says so)."""


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
        self.stopping = threading.Event()
        """Set when the server begins to shut down: waits (for the model) end at once."""
        self._caught_up = threading.Event()
        self._catch_up_lock = threading.Lock()

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
        supersedes: list[str] | None = None,
    ) -> RememberResult:
        """Store a memory. `supersedes`: ids of memories of the same namespace this one corrects; they stop
        coming back from recall, and forgetting this one brings them back."""
        text = validate_text(text, self.limits.max_text_bytes)
        namespace = self._namespace(namespace)
        clean_tags = validate_tags(tags)
        importance = validate_importance(importance)
        ttl = validate_positive_days(ttl_days, "ttl_days")
        clean_metadata = validate_metadata(metadata)
        replaced = tuple(validate_ids(supersedes, "supersedes"))
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
            supersedes=replaced,
        )
        try:
            stored, merged = self.backend.memories.remember(new, merge_remembered)
        except UnknownMemories as exc:
            raise InvalidInput(
                f"supersedes names {', '.join(exc.ids)}, which are not memories of namespace {namespace!r}; "
                "nothing was stored"
            ) from None
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
        """The best memories for a query; see recall_outcome for which retrievers served it."""
        return self.recall_outcome(query, namespace, tags, limit, since, until, fusion=fusion, touch=touch).hits

    def recall_outcome(
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
    ) -> RecallOutcome:
        """Recall, and say whether vectors took part ('hybrid') or not ('keyword', with the reason). While the
        embedding model loads, a recall waits for it up to model_wait_s rather than silently dropping vectors."""
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
        query_vector: Vector | None = None
        note: str | None = "keyword-only ranking was asked for"
        if fusion.method != "keyword":
            query_vector, note = self._query_vector(dense_query_text(query, fusion))
        ranked = run_recall(self.backend, request, query_vector, fusion)
        if touch and ranked:
            self._record_access([m.key for m, _ in ranked], now)
        return RecallOutcome(
            [_hit(m, score) for m, score in ranked], "keyword" if query_vector is None else "hybrid", note
        )

    def _query_vector(self, query: str) -> tuple[Vector | None, str | None]:
        """The query's embedding, or None and why not; and a note if some memories are still unembedded."""
        deadline = time.monotonic() + self.limits.model_wait_s
        ready = False
        while not self.stopping.is_set():
            # In short slices, so a shutdown (stdin closed, a signal) ends the wait at once.
            if self.embedder.wait_ready(min(0.1, max(0.0, deadline - time.monotonic()))):
                ready = True
                break
            if getattr(self.embedder, "error", None) is not None or time.monotonic() >= deadline:
                break
        if not ready:
            error = getattr(self.embedder, "error", None)
            if error is not None:
                return None, f"the embedding model is unavailable ({error}); keyword search only"
            if self.stopping.is_set():
                return None, "the server is shutting down; keyword search only"
            return (
                None,
                f"the embedding model was still loading after {self.limits.model_wait_s:g} s; keyword search only",
            )
        try:
            vector = self.embedder.embed([query])[0]
        except EmbeddingModelError as exc:
            return None, f"the embedding model failed ({exc}); keyword search only"
        return vector, self._catch_up_embeddings()

    def _catch_up_embeddings(self) -> str | None:
        """Right after the model loaded, memories stored before (by a one-shot host's previous process, say)
        have no vector yet. Embed a bounded number of them now rather than search vectors that miss them;
        if more remain, say so. Once a pass found nothing pending, this costs nothing."""
        if self._caught_up.is_set():
            return None
        with self._catch_up_lock:
            if not self._caught_up.is_set():
                try:
                    self.embed_pending(max_batches=CATCH_UP_BATCHES)
                    left = self.pending_embeddings()
                except Exception as exc:  # best effort: the recall itself must still answer
                    log.warning("embedding memories stored before the model loaded failed: %s", exc)
                    return f"memories stored before the model loaded could not be embedded now ({exc})"
                if left:
                    return (
                        f"{left} memories have no vector yet (the model has just loaded); they were found by "
                        "keyword only"
                    )
                self._caught_up.set()
        return None

    def mark_embeddings_caught_up(self) -> None:
        """The background writer found nothing pending: recalls need not catch up any more."""
        self._caught_up.set()

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

    def get(self, memory_id: str) -> Memory | None:
        """One memory by id, in whichever namespace it is (for people browsing: hosts' resource views)."""
        [checked] = validate_ids([memory_id], "id")
        found = self.backend.memories.get(None, [checked])
        return found[0] if found else None

    def recent(self, namespace: str, limit: int = 50, before: str | None = None) -> list[Memory]:
        """A page of a namespace's memories, newest first; `before`: the id the previous page ended with."""
        namespace = validate_namespace(namespace)
        before_key = None
        if before is not None:
            anchor = self.backend.memories.get(namespace, validate_ids([before], "before"))
            if not anchor:
                raise InvalidInput(f"no memory {before!r} in namespace {namespace!r} to page from")
            before_key = anchor[0].key
        return self.backend.memories.recent(namespace, validate_limit(limit), before_key)

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

    def embedding_batch(self, after_key: int = 0, size: int | None = None) -> list[tuple[int, str, str]]:
        """The next (key, text, content_hash) memories with no vector from the current model."""
        return self.backend.embeddings.pending(self.embedder.model_id, size or self.limits.embed_batch_size, after_key)

    def store_embeddings(self, batch: list[tuple[int, str, str]], vectors: Vector) -> int:
        """Store the vectors of a batch from embedding_batch; returns how many were written."""
        written = self.backend.embeddings.write(
            self.embedder.model_id, [(key, digest, v) for (key, _, digest), v in zip(batch, vectors, strict=True)]
        )
        if written:
            self.backend.vectors.refresh()
        return written

    def embed_pending(self, batch_size: int | None = None, max_batches: int | None = None) -> int:
        """Embed memories that have no vector from the current model; returns how many were written."""
        written = batches = after = 0
        while max_batches is None or batches < max_batches:
            batch = self.embedding_batch(after, batch_size)
            if not batch:
                break
            written += self.store_embeddings(batch, self.embedder.embed([text for _, text, _ in batch]))
            after = batch[-1][0]
            batches += 1
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
        updated_at=iso(memory.updated_at),
        expires_at=None if memory.expires_at is None else iso(memory.expires_at),
        score=round(float(score), 6),
    )
