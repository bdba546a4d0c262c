"""MemoryService: remember, recall, forget, auto-forget and stats - what the tools, the CLI and tests call.

Synchronous and thread-safe; the MCP server calls it from worker threads. It holds the rules (validation,
what re-remembering does, what a forget may touch) and speaks to storage only through the ports.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import DEFAULT_MODEL, MODEL_WAIT_S
from ..embeddings import Embedder, EmbeddingModelError
from .forgetting import AutoForgetPolicy, AutoForgetReport, auto_forget, forget
from .fusion import FusionParams, best_match, dense_query_text, relevance_of
from .model import (
    DAY,
    MAX_KEY,
    ForgetResult,
    Hit,
    Memory,
    MemoryEdit,
    MemoryFilter,
    MemoryUpdate,
    NewMemory,
    RecallOutcome,
    RememberResult,
    content_hash,
    iso,
    new_id,
)
from .ports import StorageBackend, StoreError, UnknownMemories, Vector
from .recall import RecallRequest, match_signals
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


RECENT_SWEEPS_KEY = "auto_forget_recent_sweeps"
UI_SECRET_KEY = "ui_session_secret"
"""The web UI's session secret (random, created once), shared by every process on the store."""
RECENT_SWEEPS_KEPT = 20
"""How many auto-forget sweeps the store remembers (for the web UI's stats page), newest first."""
SWEEP_IDS_KEPT = 20
"""Per sweep and rule, how many of the ids it deleted or superseded are kept with the record."""

CATCH_UP_BATCHES = 2
"""At most this many embedding batches (64 memories each) a recall embeds itself right after the model loads."""
RECALL_VECTORS_KEPT = 1024
"""How many vectors a process keeps of those its recalls computed for memories with none stored yet (~1.5 MB
at 384 dimensions), so repeated recalls during a backlog do not embed the same memories again."""


@dataclass(slots=True, frozen=True)
class ServiceLimits:
    namespace: str = "default"
    """The namespace of every call that names none."""
    max_text_bytes: int = 32 * 1024
    embed_batch_size: int = 64
    embedding_lease_s: float = 60.0
    """How long a claimed embedding batch is this process's before another may take it (it died, say)."""
    model_wait_s: float = MODEL_WAIT_S
    """How long a recall waits for the embedding model to finish loading before it answers by keyword only
    (and says so)."""
    recall_embed_max: int = 8
    """At most this many keyword candidates with no vector yet a recall embeds itself (best keyword match first;
    MiniLM took ~9 ms a memory on the 2-core CPU); the rest get the median cosine of the other candidates."""
    recall_embed_wait_s: float = 0.25
    """How long a recall waits for those vectors before it uses the stand-in cosine for them too."""


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
        self._recall_vectors: OrderedDict[int, Vector] = OrderedDict()
        self._recall_embedding: dict[int, Future[None]] = {}
        """Memories whose vectors a recall asked for and the model has not returned yet."""
        self._recall_vectors_lock = threading.Lock()

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
        # Calibrated: relevance reads cosines only of the model it was fitted for (another's are on another scale).
        calibrated = self.embedder.model_id.startswith(f"{DEFAULT_MODEL}@")
        with self.backend.vectors.one_read():
            ranked = run_recall(self.backend, request, query_vector, fusion, self._vectors_for_recall)
            signals = match_signals(self.backend, request, query_vector if calibrated else None, ranked)
        if touch and ranked:
            self._record_access([m.key for m, _ in ranked], now)
        judged = [relevance_of(cosine, coverage) for cosine, coverage in signals]
        return RecallOutcome(
            [_hit(m, score, value) for (m, score), (value, _) in zip(ranked, judged, strict=True)],
            "keyword" if query_vector is None else "hybrid",
            note,
            best_match([level for _, level in judged]),
        )

    def _query_vector(self, query: str) -> tuple[Vector | None, str | None]:
        """The query's embedding, or None and why not; and a note if some memories are still unembedded."""
        deadline = time.monotonic() + self.limits.model_wait_s
        ready = self.embedder.ready  # a model already loaded serves a recall made during the shutdown too
        while not ready and not self.stopping.is_set():
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

    def _vectors_for_recall(self, namespace: str, keys: list[int]) -> dict[int, Vector]:
        """Vectors for the first recall_embed_max of these memories (best first) that have none stored: kept
        from an earlier recall, or embedded now, waited for at most recall_embed_wait_s (the model embeds one
        batch at a time: behind the embedding writer's, the recall answers with the stand-in cosine, and the
        vectors, still computed, serve the next recall). Kept in this process only, never written: a recall
        takes no write lock (the embedding writer stores them, as for every memory)."""
        keys = keys[: self.limits.recall_embed_max]  # the same ones whatever earlier recalls computed
        with self._recall_vectors_lock:
            wanted = [k for k in keys if k not in self._recall_vectors and k not in self._recall_embedding]
        if self.stopping.is_set():
            wanted = []  # shutting down: no new model work
        texts = self.backend.memories.texts(namespace, wanted) if wanted else {}
        with self._recall_vectors_lock:
            wanted = [k for k in wanted if k in texts and k not in self._recall_vectors]
            wanted = [k for k in wanted if k not in self._recall_embedding]
            if wanted:
                done: Future[None] = Future()
                self._recall_embedding.update(dict.fromkeys(wanted, done))
                # A daemon thread, so that the recall can stop waiting; a shutdown does not wait for it.
                threading.Thread(
                    target=self._embed_for_recall,
                    args=(wanted, [texts[k] for k in wanted], done),
                    name="recall embedding",
                    daemon=True,
                ).start()
            waiting = {self._recall_embedding[k] for k in keys if k in self._recall_embedding}
        if waiting:
            futures.wait(waiting, timeout=self.limits.recall_embed_wait_s)
        with self._recall_vectors_lock:
            return {k: self._recall_vectors[k] for k in keys if k in self._recall_vectors}

    def _embed_for_recall(self, keys: list[int], texts: list[str], done: Future[None]) -> None:
        try:
            vectors = self.embedder.embed(texts)
            with self._recall_vectors_lock:
                for key, v in zip(keys, vectors, strict=True):
                    self._recall_vectors[key] = np.asarray(v, dtype=np.float32)
                    self._recall_vectors.move_to_end(key)
                while len(self._recall_vectors) > RECALL_VECTORS_KEPT:
                    self._recall_vectors.popitem(last=False)
        except Exception as exc:  # the recall answers with the stand-in cosine; a later one tries again
            log.warning("embedding %d memories without a vector for a recall failed: %s", len(keys), exc)
        finally:
            with self._recall_vectors_lock:
                for key in keys:
                    if self._recall_embedding.get(key) is done:
                        del self._recall_embedding[key]
            done.set_result(None)

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

    def recent(
        self,
        namespace: str,
        limit: int = 50,
        before: str | None = None,
        tags: list[str] | None = None,
        before_key: int | None = None,
        after_key: int | None = None,
    ) -> list[Memory]:
        """A page of a namespace's memories, newest first, with all of `tags` if given; `before`: the id the
        previous page ended with, or `before_key`: its key (which still pages once that memory is forgotten:
        keys are never reused); or `after_key`: the page just above that key (paging back toward the newest)."""
        namespace = validate_namespace(namespace)
        clean_tags = validate_tags(tags)
        for name, key in (("before_key", before_key), ("after_key", after_key)):
            if key is not None and (isinstance(key, bool) or not isinstance(key, int) or not 0 <= key <= MAX_KEY):
                raise InvalidInput(f"{name} must be a whole number from 0 to 2^63 - 1, got {key!r}")
        if sum(x is not None for x in (before, before_key, after_key)) > 1:
            raise InvalidInput("give one of before, before_key and after_key, not several")
        if before is not None:
            anchor = self.backend.memories.get(namespace, validate_ids([before], "before"))
            if not anchor:
                raise InvalidInput(f"no memory {before!r} in namespace {namespace!r} to page from")
            before_key = anchor[0].key
        return self.backend.memories.recent(namespace, validate_limit(limit), before_key, clean_tags, after_key)

    def neighbours_in_time(self, memory: Memory, width: int = 3) -> tuple[list[Memory], list[Memory]]:
        """The memories written up to `width` places before and after this one in its namespace (the ones
        recall's neighbour rule looks at), each list oldest first."""
        [pairs] = self.backend.memories.neighbours(memory.namespace, [memory.key], width).values()
        earlier = [b for b, _ in pairs if b is not None]
        later = [a for _, a in pairs if a is not None]
        found = self.backend.memories.get_by_keys(memory.namespace, earlier + later)
        return (
            [found[k] for k in sorted(earlier) if k in found],
            [found[k] for k in sorted(later) if k in found],
        )

    def superseded_by(self, memory: Memory) -> list[Memory]:
        """The memories this one supersedes (corrects, or replaced as a near-duplicate), oldest first."""
        return self.backend.memories.find(MemoryFilter(namespace=memory.namespace, superseded_by=memory.id))

    def created_per_day(self, days: int, now: float | None = None) -> list[tuple[str, str, int]]:
        """(namespace, UTC day 'YYYY-MM-DD', memories created that day still stored) over the last `days`
        UTC days, today included."""
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3660:
            raise InvalidInput(f"days must be a whole number from 1 to 3660, got {days!r}")
        now = time.time() if now is None else now
        since = (now // DAY - (days - 1)) * DAY  # the start of the first UTC day
        return self.backend.memories.created_per_day(since)

    # -- a person's edit

    def edit(
        self,
        memory_id: str,
        namespace: str | None = None,
        *,
        tags: list[str] | None = None,
        importance: float | None = None,
        ttl_days: float | None = None,
        never_expires: bool = False,
    ) -> Memory | None:
        """A person's edit of one memory of the namespace (the web UI). `tags`: the full new list; `importance`;
        the expiry: `ttl_days` from now, or `never_expires`. None leaves a field as it is. The checks are
        remember's. Unlike re-remembering, an edit may lower importance or shorten a life: a person decided.
        Returns the memory as stored, or None if the namespace has no memory with this id."""
        [checked_id] = validate_ids([memory_id], "id")
        namespace = self._namespace(namespace)
        new_tags = None if tags is None else validate_tags(tags)
        new_importance = None if importance is None else validate_importance(importance)
        ttl = validate_positive_days(ttl_days, "ttl_days")
        if ttl is not None and never_expires:
            raise InvalidInput("give either ttl_days or never_expires, not both")
        now = time.time()

        def change(current: Memory) -> MemoryEdit:
            if ttl is not None:
                expires_at: float | None = now + ttl * DAY
            else:
                expires_at = None if never_expires else current.expires_at
            return MemoryEdit(
                tags=current.tags if new_tags is None else new_tags,
                importance=current.importance if new_importance is None else new_importance,
                expires_at=expires_at,
            )

        return self.backend.memories.edit(namespace, checked_id, change)

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
        """One sweep of the auto-forget policy; a real one (not dry_run) is recorded for recent_sweeps."""
        self.flush_accesses()  # "unused" must see the latest recalls
        started_at, started = time.time(), time.monotonic()
        report = auto_forget(
            self.backend.memories,
            self.backend.vectors,
            self.backend.embeddings,
            self.policy,
            dry_run=dry_run,
            now=started_at if now is None else now,
        )
        if not dry_run:
            try:
                self._record_sweep(report, started_at, time.monotonic() - started)
            except Exception:  # the sweep itself is done; its record is for people only
                log.exception("recording the auto-forget sweep failed")
        return report

    def _record_sweep(self, report: AutoForgetReport, at: float, seconds: float) -> None:
        record = {
            "at": iso(at),
            "seconds": round(seconds, 3),
            **report.counts,
            "ids": {
                "expired": report.expired[:SWEEP_IDS_KEPT],
                "superseded": report.superseded[:SWEEP_IDS_KEPT],
                "low_importance": report.low_importance[:SWEEP_IDS_KEPT],
            },
        }
        # Read, then written: two processes sweeping in the same instant may keep one record of the two.
        kept = [record, *self.recent_sweeps()][:RECENT_SWEEPS_KEPT]
        self.backend.memories.put_setting(RECENT_SWEEPS_KEY, json.dumps(kept))

    def ui_secret(self) -> str:
        """The web UI's session secret, shared by every process on this store (sessions and CSRF tokens made
        by one are valid in all): random, created by the first process that asks. Processes creating it at once
        all get the first one's value (an insert that keeps an existing value, and a read, in one transaction)."""
        stored = self.backend.memories.get_setting(UI_SECRET_KEY)
        if stored:
            return stored
        stored = self.backend.memories.put_setting_once(UI_SECRET_KEY, secrets.token_urlsafe(32))
        if not stored:
            raise StoreError("the web UI's session secret could not be kept in the store")
        return stored

    def recent_sweeps(self) -> list[dict[str, Any]]:
        """The last RECENT_SWEEPS_KEPT auto-forget sweeps of any process on this store, newest first: when
        (`at`, ISO 8601 UTC), how long (`seconds`), how many memories each rule removed (`expired`,
        `superseded`, `low_importance`) and up to SWEEP_IDS_KEPT of their ids per rule (`ids`)."""
        raw = self.backend.memories.get_setting(RECENT_SWEEPS_KEY)
        try:
            sweeps = json.loads(raw) if raw else []
        except ValueError:
            log.warning("the stored record of recent auto-forget sweeps is unreadable; starting it anew")
            return []
        return [s for s in sweeps if isinstance(s, dict)] if isinstance(sweeps, list) else []

    # -- embeddings and the vector index

    def embedding_batch(self, after_key: int = 0, size: int | None = None) -> list[tuple[int, str, str]]:
        """The next (key, text, content_hash) memories with no vector from the current model, claimed for this
        process (for embedding_lease_s) where several processes share the backlog."""
        return self.backend.embeddings.claim(
            self.embedder.model_id, size or self.limits.embed_batch_size, after_key, self.limits.embedding_lease_s
        )

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

    def close(self, checkpoint: bool = True, write_accesses: bool = True) -> None:
        """Write the buffered access stats, checkpoint and close; a shutdown whose store does not answer skips
        the first two (each would wait for it), losing the access stats of the last interval at most."""
        if write_accesses:
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


def _hit(memory: Memory, score: float, relevance: float) -> Hit:
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
        relevance=round(relevance, 3),
    )
