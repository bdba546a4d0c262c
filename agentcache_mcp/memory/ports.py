"""The ports: what the core needs from a storage backend, stated as Protocols over value objects.

A backend (SQLite, PostgreSQL) implements all four and passes tests/contract. The core never
sees SQL, a connection or a cursor; it hands over `MemoryFilter`s, keys and vectors.

Promises every backend keeps (each is a contract test):
- keys increase with every insert and are never reused;
- `delete(filter)` decides and deletes in one transaction, and returns exactly the ids it deleted;
- a deleted memory leaves nothing behind: no keyword index entry (its own or as a neighbour's context), no
  vector, and, once the backend's `erase` ran, none of its text in the backend's files;
- deleting a memory revives the memories it superseded;
- every search, neighbour lookup and hydration is confined to the namespace it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from .model import Memory, MemoryEdit, MemoryFilter, MemoryUpdate, NewMemory

if TYPE_CHECKING:
    from ..auth.state import AuthStateStore

Vector = npt.NDArray[np.float32]
Merge = Callable[[Memory, NewMemory], MemoryUpdate]
Change = Callable[[Memory], MemoryEdit]


class StoreError(RuntimeError):
    """The store cannot be used: the message says why and what to do."""


class StoreUnavailable(StoreError):
    """The store the configuration names cannot be used at all: its driver is not installed, its server is not
    reachable, or it lacks a required extension. The command line reports it as a configuration error (exit 2)."""


class StoreFullError(StoreError):
    """The disk (or a configured size limit) is full; nothing was written."""


class StoreBusy(StoreError):
    """The store did not let a call through in time: another process holds a lock it needs, or its server does not
    answer or cannot be reached. The message says which, and whether anything was written."""


class UnknownMemories(LookupError):
    """Ids a write refers to that are not memories of its namespace; nothing was written."""

    def __init__(self, ids: list[str]):
        super().__init__(", ".join(ids))
        self.ids = ids


class MemoryRepository(Protocol):
    """The memories themselves: the source of truth."""

    def remember(self, new: NewMemory, merge: Merge) -> tuple[Memory, bool]:
        """Insert `new`; if the namespace already holds the same content hash, apply `merge(existing, new)` to
        it instead, in the same transaction. Returns the stored memory and whether it was merged. `merge` may
        raise (InvalidInput): then nothing is written. The memories `new.supersedes` names (in the namespace)
        are marked superseded by the stored one in the same transaction; UnknownMemories if any is missing."""
        ...

    def get(self, namespace: str | None, ids: Sequence[str]) -> list[Memory]:
        """The memories with these ids (in namespace, unless None), in no particular order."""
        ...

    def get_by_keys(self, namespace: str, keys: Sequence[int]) -> dict[int, Memory]: ...

    def texts(self, namespace: str, keys: Sequence[int], prefix: int | None = None) -> dict[int, str]:
        """The text of each given memory of namespace (keys of other namespaces or gone: left out), only its
        first `prefix` characters if given; what recall reads of the ~200 memories it re-ranks, without building
        whole Memory objects."""
        ...

    def find(self, where: MemoryFilter) -> list[Memory]:
        """Every memory matching the filter, oldest first."""
        ...

    def find_by_content(self, pairs: Sequence[tuple[str, str]]) -> list[Memory]:
        """The stored memories with these (namespace, content_hash) pairs."""
        ...

    def scan(self, after_key: int, limit: int, namespaces: Sequence[str] | None = None) -> list[Memory]:
        """Up to `limit` memories with keys above after_key (in these namespaces, if given), oldest first:
        a whole store read page by page in constant memory (export)."""
        ...

    def restore(self, items: Iterable[tuple[Memory, tuple[str, Vector] | None]]) -> tuple[int, int]:
        """Insert memories exactly as given (id, times, stats; the key is assigned anew, in the order given),
        each with an optional (model id, vector), all in ONE transaction: if anything raises, nothing is kept.
        A memory whose id, or whose content in its namespace, is already stored is skipped.
        Returns (added, skipped). The iterable is consumed lazily, inside the transaction."""
        ...

    def superseding(self, ids: Sequence[str]) -> list[tuple[str, str]]:
        """(id, namespace) of the stored memories whose superseded_by is one of `ids`, whether or not a memory
        with that id exists: what an import checks before it stores a memory under one of these ids."""
        ...

    def recent(
        self,
        namespace: str,
        limit: int,
        before_key: int | None = None,
        tags: Sequence[str] = (),
        after_key: int | None = None,
    ) -> list[Memory]:
        """A page of the namespace's memories, newest first (by key), with keys below before_key if given, and
        with all of `tags` if any. Superseded and expired memories are included. after_key (not with
        before_key): the `limit` memories with keys just above it (the page before, for paging back), still
        newest first."""
        ...

    def edit(self, namespace: str, memory_id: str, change: Change) -> Memory | None:
        """Apply `change(current)` to the memory `memory_id` of `namespace`, read and written in ONE transaction:
        its tags, importance and expires_at become the MemoryEdit's; nothing else changes (text, hash, times,
        access stats, superseded_by, key). Returns the memory as stored after the edit, or None (nothing
        written) if the namespace holds no such memory. `change` may raise (InvalidInput): nothing is written."""
        ...

    def created_per_day(self, since: float) -> list[tuple[str, str, int]]:
        """(namespace, UTC day as 'YYYY-MM-DD', count) of the stored memories created at or after `since`
        (epoch seconds), every namespace, any state (superseded and expired count too); days with none are
        left out; ordered by day, then namespace."""
        ...

    def delete(self, where: MemoryFilter, limit: int | None = None) -> list[str]:
        """Delete every memory matching the filter (the oldest `limit`, if given), decided and done in one
        transaction; the ids deleted, oldest first."""
        ...

    def live_keys(self, namespace: str, keys: Sequence[int], where: MemoryFilter) -> set[int]:
        """The subset of keys (memories of namespace) that match `where` (normally with live_at set)."""
        ...

    def supersede(self, pairs: Sequence[tuple[str, str]], now: float) -> list[str]:
        """Mark each (id, by id) as superseded, in one transaction, where it still holds at write time that
        the memory is not superseded yet and `by` is live at `now` and at least as important; returns the ids
        marked."""
        ...

    def neighbours(
        self, namespace: str, keys: Sequence[int], width: int
    ) -> dict[int, list[tuple[int | None, int | None]]]:
        """For each key, the keys written 1..width places before and after it in its namespace."""
        ...

    def record_access(self, accesses: Mapping[int, tuple[int, float]]) -> None:
        """Add (count, last time) of recalls to each memory's access stats."""
        ...

    def counts_by_namespace(self) -> dict[str, int]: ...

    def get_setting(self, name: str) -> str | None:
        """A small value the core keeps in the store (e.g. the auto-forget watermark)."""
        ...

    def put_setting(self, name: str, value: str) -> None: ...

    def put_setting_once(self, name: str, value: str) -> str:
        """Store value under name unless a non-empty value is stored there already, and return the stored
        value: one atomic step, so of several processes doing this at once every one gets the first one's."""
        ...


class KeywordIndex(Protocol):
    """BM25 over the memories' words, kept in step with the repository by the backend."""

    def informative_terms(self, namespace: str, terms: list[str]) -> list[str]:
        """Drop terms found in more than half of the namespace's memories (by their own text), unless that
        drops them all; namespaces under PRUNE_TERMS_FROM_ROWS memories keep every term."""
        ...

    def search(
        self, namespace: str, terms: list[str], limit: int, where: MemoryFilter, context_weight: float
    ) -> list[tuple[int, float]]:
        """(key, score), best first, higher is better; terms are OR-ed; only memories matching `where`."""
        ...

    def check(self) -> bool:
        """The index is sound and covers exactly the stored memories."""
        ...

    def rebuild(self) -> None: ...


class VectorIndex(Protocol):
    """Exact or approximate cosine search over the stored embeddings of one model."""

    @property
    def model_id(self) -> str: ...

    @property
    def loaded(self) -> bool: ...

    def __len__(self) -> int: ...

    def load(self) -> int:
        """(Re)build whatever the backend keeps in memory; returns how many vectors are searchable."""
        ...

    def refresh(self) -> None:
        """Catch up with writes and deletes made since the last call (by any process)."""
        ...

    def one_read(self) -> AbstractContextManager[None]:
        """Within the block, this thread catches up (refresh) once, at its first search or score: one recall's
        several reads of the vectors cost one catch-up; what is written meanwhile may show only from the next
        block on (never older than the block's start). A backend whose catch-up costs nothing when nothing
        changed may ignore it."""
        ...

    def search(self, namespace: str, query: Vector, k: int, where: MemoryFilter) -> list[tuple[int, float]]:
        """Top-k (key, cosine) in namespace among memories matching `where`, best first."""
        ...

    def scores_for(self, namespace: str, query: Vector, keys: Sequence[int]) -> dict[int, float]:
        """Exact cosine of the query with each of these memories that has a vector."""
        ...

    def vectors(self, namespace: str) -> tuple[npt.NDArray[np.int64], Vector]:
        """(keys, unit vectors) of one namespace, for the near-duplicate rule."""
        ...


class EmbeddingStore(Protocol):
    """Vectors stored with the memories, keyed by model: several models can share one store."""

    def pending(self, model_id: str, limit: int, after_key: int = 0) -> list[tuple[int, str, str]]:
        """(key, text, content_hash) of memories with no vector from model_id, oldest first."""
        ...

    def claim(self, model_id: str, limit: int, after_key: int = 0, lease_s: float = 60.0) -> list[tuple[int, str, str]]:
        """Like `pending`, for a writer that is about to embed them: (key, text, content_hash) of up to `limit`
        memories with no vector from model_id, oldest first, that no other live writer has claimed. Where
        several processes share the backlog the rows are claimed for lease_s seconds (a process that dies
        with a claim leaves the rows to the others after that); a backend with one writer per store at a time
        may simply return `pending`."""
        ...

    def count_pending(self, model_id: str) -> int: ...

    def first_pending_key(self, model_id: str) -> int | None: ...

    def max_key(self) -> int: ...

    def vectors_of(self, model_id: str, keys: Sequence[int]) -> dict[int, Vector]:
        """The stored vectors of these memories from model_id (those that have one)."""
        ...

    def write(self, model_id: str, items: Sequence[tuple[int, str, Vector]]) -> int:
        """Store (key, content_hash, vector); a memory deleted or changed meanwhile is skipped."""
        ...


@dataclass(frozen=True)
class EraseReport:
    """What one erase did: `erased` if it removed what deletes left in the store's files."""

    erased: bool
    note: str
    """One line for people: what was rewritten, or why nothing was."""
    memories: int | None = None
    """Forgotten memories whose bytes it removed (None: not known, e.g. deleted before the count was kept)."""
    locked_s: float = 0.0
    """How long it held the store's table exclusively (every call of every process waited meanwhile); an upper
    bound: it includes the last wait for the lock, at most the lock timeout."""
    seconds: float = 0.0
    """The whole erase, waits and retries included."""
    attempts: int = 0
    """How many times it asked for the table's lock."""


class StorageBackend(Protocol):
    """One store: its repository, indexes and embeddings, and its lifecycle."""

    @property
    def memories(self) -> MemoryRepository: ...

    @property
    def keywords(self) -> KeywordIndex: ...

    @property
    def vectors(self) -> VectorIndex: ...

    @property
    def embeddings(self) -> EmbeddingStore: ...

    @property
    def auth_state(self) -> AuthStateStore:
        """The OAuth state (clients, grants, codes, tokens) kept in this store, shared by every process on it."""
        ...

    @property
    def batch_pause_s(self) -> float:
        """How long a writer of many batches (an import) lets go of the store between two, so that a write
        waiting meanwhile goes first: SQLite's waiters sleep and retry, PostgreSQL's are queued in order."""
        ...

    def describe(self) -> dict[str, Any]:
        """What stats show about the store: kind, location, schema version."""
        ...

    def exclusive(self, name: str) -> AbstractContextManager[bool]:
        """Hold a store-wide lock called `name` for the with-block, if no other process holds it: yields True
        if this process got it (the block runs alone), False if another holds it (the block should skip its
        work). For work that must run on one replica at a time, such as the auto-forget sweep."""
        ...

    def bulk_load(self, expected_rows: int) -> AbstractContextManager[None]:
        """Around an import that is about to add `expected_rows` memories (with vectors): where the backend
        loads faster without an index and builds it after (PostgreSQL's HNSW index, when the store holds few
        vectors for the load's size), it drops the index on entry and builds it again on exit, whether the block
        ended or raised. Searches stay correct meanwhile (exact, slower). A backend with nothing to gain: no-op."""
        ...

    def maintenance(self) -> None:
        """Periodic housekeeping (e.g. pruning a change log); run after an auto-forget sweep."""
        ...

    def checkpoint(self) -> None:
        """Make everything committed durable in the main files (and, where the store's erase setting says so,
        drop what deletes left behind)."""
        ...

    def erase(self) -> EraseReport:
        """Remove what deletes left in the store's files, now, whatever the schedule: after it, no file of the
        store (but the write-ahead log, see the backend) holds a deleted memory's text."""
        ...

    def scheduled_erase(self, now: float) -> float | None:
        """Run the erase if its schedule says it is due at `now` (epoch seconds); the time of the next check,
        or None if this store has no schedule (it erases at each delete, at each sweep, or only when asked).
        One process at a time."""
        ...

    def give_up_waits(self, after_s: float) -> None:
        """The server is stopping: from `after_s` seconds on, a call that waits for the store (a lock another
        process holds, a connection to a server that is down) stops waiting and raises StoreBusy, nothing
        written. Thread-safe; waits already under way end too."""
        ...

    def close(self) -> None: ...
