"""The memory model: value objects shared by the core, the backends and the adapters. No SQL, no I/O.

A memory has two names. `id` is the public one (a ULID, what tools, exports and people see). `key` is the
backend's row key: an integer that increases with every insert in a store and is never reused, so the order
of keys within a namespace is the order memories were written (recall's neighbours use it) and a key that
was deleted can never come to mean another memory.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

DAY = 86_400.0
MAX_KEY = 2**63 - 1
"""The largest memory key (a store's row key: a signed 64-bit integer in both backends)."""

MetadataValue = str | int | float | bool
MatchLevel = Literal["good", "weak", "none"]
"""How well a recall's best hit matches: good; weak (related, may not answer); none (nothing matches well)."""


@dataclass(slots=True)
class Memory:
    """A stored memory, as every backend returns it."""

    key: int
    id: str
    namespace: str
    text: str
    tags: list[str]
    importance: float
    metadata: dict[str, MetadataValue]
    created_at: float
    updated_at: float
    """When it was last remembered again (or created)."""
    last_accessed_at: float | None
    access_count: int
    expires_at: float | None
    superseded_by: str | None
    content_hash: str


@dataclass(slots=True, frozen=True)
class NewMemory:
    """What `remember` asks a repository to store (already validated)."""

    id: str
    namespace: str
    text: str
    content_hash: str
    tags: list[str]
    importance: float
    metadata: dict[str, MetadataValue]
    created_at: float
    expires_at: float | None
    supersedes: tuple[str, ...] = ()
    """Ids of memories of the same namespace this one replaces (a correction)."""


@dataclass(slots=True, frozen=True)
class MemoryUpdate:
    """The fields a merge (re-remembering the same text) writes over an existing memory."""

    tags: list[str]
    importance: float
    metadata: dict[str, MetadataValue]
    updated_at: float
    expires_at: float | None
    superseded_by: str | None


@dataclass(slots=True, frozen=True)
class MemoryEdit:
    """What a person may change of a stored memory (the web UI's edit form): tags, importance and expiry.
    The text, and so its hash, indexes and vectors, never change."""

    tags: list[str]
    importance: float
    expires_at: float | None


@dataclass(slots=True, frozen=True)
class MemoryFilter:
    """Which memories an operation applies to: a value object every backend translates, never a SQL fragment.

    Every field narrows the selection (they are AND-ed). `namespace` None means every namespace: only the
    store-wide auto-forget sweep uses that; everything a caller reaches names exactly one namespace.
    """

    namespace: str | None
    ids: tuple[str, ...] | None = None
    key_after: int | None = None
    """key > this."""
    key_upto: int | None = None
    """key <= this."""
    tags: tuple[str, ...] = ()
    """Has all of these tags."""
    created_since: float | None = None
    """created_at >= this."""
    created_until: float | None = None
    """created_at <= this."""
    created_before: float | None = None
    """created_at < this (forget's older_than_days)."""
    expired_at: float | None = None
    """Has an expiry, at or before this time."""
    max_importance: float | None = None
    """importance <= this."""
    unused_since: float | None = None
    """Neither remembered again nor returned by a recall at or after this time."""
    superseded_by: str | None = None
    """Superseded by the memory with this id (what a memory corrects or replaced)."""
    live_at: float | None = None
    """Only memories a recall may return at this time: not expired, and not superseded by a memory that is
    itself still there and unexpired (deleting or expiring the superseding memory brings this one back)."""

    @property
    def narrows_recall(self) -> bool:
        """True if it filters by more than namespace and liveness (tags or a time window)."""
        return bool(self.tags) or self.created_since is not None or self.created_until is not None


@dataclass(slots=True)
class Hit:
    """One recall result."""

    id: str
    text: str
    namespace: str
    tags: list[str]
    importance: float
    metadata: dict[str, Any]
    created_at: str
    updated_at: str
    expires_at: str | None
    score: float
    """The fused ranking score: comparable within one recall only."""
    relevance: float
    """0 to 1, comparable across recalls: how well this memory matches the query by absolute signals (its
    cosine with the query, the share of the query's words it holds), fitted on LoCoMo (memory/fusion.py)."""


@dataclass(slots=True)
class RecallOutcome:
    hits: list[Hit]
    retrieval: str
    """'hybrid' (keywords and vectors) or 'keyword' (keywords only)."""
    note: str | None = None
    """Why recall was keyword-only, when it was."""
    match: MatchLevel = "none"
    """'good', 'weak' or 'none': the best of the hits' relevance levels ('none': nothing matches well)."""


@dataclass(slots=True)
class RememberResult:
    id: str
    namespace: str
    deduplicated: bool


@dataclass(slots=True)
class ForgetResult:
    deleted: list[str]
    """The ids deleted, or with dry_run the ids that would be."""
    dry_run: bool
    not_found: list[str] = field(default_factory=list)
    previews: list[tuple[str, str]] = field(default_factory=list)
    """With dry_run: (id, the start of its text) of each memory that would be deleted."""
    """Ids asked for that are not memories of this namespace (deleted already, never existed, or another
    namespace's): nothing was done to them."""


# --- ids, hashes, times -----------------------------------------------------------------------------------

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_id_lock = threading.Lock()
_last_id: list[int] = [0, 0]  # [millis, random] of the previous id, for monotonic ids within a millisecond


def new_id() -> str:
    """A ULID: 48-bit millisecond time + 80 random bits, Crockford base32, sortable by creation time."""
    with _id_lock:
        millis = time.time_ns() // 1_000_000
        if millis <= _last_id[0]:
            millis = _last_id[0]
            rand = _last_id[1] + 1
        else:
            rand = secrets.randbits(80)
        _last_id[0], _last_id[1] = millis, rand
    value = (millis << 80) | (rand & ((1 << 80) - 1))
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -5, -5))


def normalise_text(text: str) -> str:
    """The form two texts must share to count as the same memory: NFKC, case-folded, whitespace folded."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def content_hash(text: str) -> str:
    return hashlib.sha256(normalise_text(text).encode("utf-8")).hexdigest()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def memory_fields(m: Memory, when: Callable[[float], str | None] = iso) -> dict[str, Any]:
    """Every public field of a memory (what the resources, the CLI and exports show), times formatted by
    `when`; a time that is not set stays None."""
    return {
        "id": m.id,
        "namespace": m.namespace,
        "text": m.text,
        "tags": m.tags,
        "importance": m.importance,
        "metadata": m.metadata,
        "created_at": when(m.created_at),
        "updated_at": when(m.updated_at),
        "last_accessed_at": None if m.last_accessed_at is None else when(m.last_accessed_at),
        "access_count": m.access_count,
        "expires_at": None if m.expires_at is None else when(m.expires_at),
        "superseded_by": m.superseded_by,
    }
