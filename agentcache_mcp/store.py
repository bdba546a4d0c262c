"""SQLite store: the source of truth. Memories, their FTS5 index and the change log live in one file.

Durability: WAL with `synchronous=FULL`. Every commit fsyncs the WAL before `remember` returns, so neither
a killed process nor a power cut loses an acknowledged write (measured cost: ~0.2 ms per commit on this
class of disk). With `synchronous=NORMAL` a power cut could roll back the last commits; we do not use it.

Concurrency: several processes may share the file. Writes take the write lock up front (`BEGIN IMMEDIATE`)
so SQLite's busy handler waits for it instead of failing a half-done transaction; a bounded retry loop
covers the rare SQLITE_BUSY the handler cannot wait out. FTS5 rows and change-log rows are written by
triggers inside the same transaction as the memory, so no index can disagree with a committed row.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .validation import normalise_text

log = logging.getLogger(__name__)

T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000
BUSY_RETRY_S = 60.0
PRUNE_TERMS_FROM_ROWS = 1000


class StoreError(RuntimeError):
    """The database cannot be used: the message says why and what to do."""


class StoreFullError(StoreError):
    """The disk (or the configured page limit) is full; nothing was written."""


# --- ids and hashes ---------------------------------------------------------------------------------------

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


def namespace_token(namespace: str) -> str:
    """The single FTS5 token that stands for a namespace (same as the trigger's 'ns' || lower(hex(...)))."""
    return "ns" + namespace.encode("utf-8").hex()


def content_hash(text: str) -> str:
    return hashlib.sha256(normalise_text(text).encode("utf-8")).hexdigest()


# --- rows -------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class MemoryRow:
    pk: int
    id: str
    namespace: str
    text: str
    tags: list[str]
    importance: float
    metadata: dict[str, Any]
    created_at: float
    updated_at: float
    last_accessed_at: float | None
    access_count: int
    expires_at: float | None
    superseded_by: str | None
    content_hash: str
    embedding_model: str


_ROW_COLUMNS = (
    "pk, id, namespace, text, tags, importance, metadata, created_at, updated_at, last_accessed_at, "
    "access_count, expires_at, superseded_by, content_hash, embedding_model"
)


def _row(r: Sequence[Any]) -> MemoryRow:
    return MemoryRow(
        pk=r[0],
        id=r[1],
        namespace=r[2],
        text=r[3],
        tags=json.loads(r[4]),
        importance=r[5],
        metadata=json.loads(r[6]),
        created_at=r[7],
        updated_at=r[8],
        last_accessed_at=r[9],
        access_count=r[10],
        expires_at=r[11],
        superseded_by=r[12],
        content_hash=r[13],
        embedding_model=r[14],
    )


@dataclass(slots=True)
class Filters:
    """Which memories a search may return, besides the namespace."""

    tags: list[str] = field(default_factory=list)
    since: float | None = None
    until: float | None = None

    def sql(self, alias: str = "m") -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        for tag in self.tags:
            clauses.append(f"EXISTS (SELECT 1 FROM json_each({alias}.tags) WHERE json_each.value = ?)")
            params.append(tag)
        if self.since is not None:
            clauses.append(f"{alias}.created_at >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append(f"{alias}.created_at <= ?")
            params.append(self.until)
        return "".join(f" AND {c}" for c in clauses), params

    @property
    def active(self) -> bool:
        return bool(self.tags) or self.since is not None or self.until is not None


@dataclass(slots=True)
class Change:
    seq: int
    pk: int
    op: str  # 'embed' (a vector was written) or 'delete'
    namespace: str


# --- migrations -------------------------------------------------------------------------------------------


_SCHEMA_1 = [
    """
    CREATE TABLE memories (
        pk INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        namespace TEXT NOT NULL,
        text TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        tags TEXT NOT NULL DEFAULT '[]',
        importance REAL NOT NULL DEFAULT 0.5,
        metadata TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        last_accessed_at REAL,
        access_count INTEGER NOT NULL DEFAULT 0,
        expires_at REAL,
        superseded_by TEXT,
        embedding BLOB,
        embedding_model TEXT NOT NULL DEFAULT ''
    )
    """,
    """
    CREATE UNIQUE INDEX memories_namespace_hash ON memories(namespace, content_hash)
    """,
    """
    CREATE INDEX memories_namespace_created ON memories(namespace, created_at)
    """,
    """
    CREATE INDEX memories_expires ON memories(expires_at) WHERE expires_at IS NOT NULL
    """,
    """
    CREATE INDEX memories_embedding_model ON memories(embedding_model)
    """,
    """
    CREATE INDEX memories_namespace ON memories(namespace)
    """,
    """
    CREATE INDEX memories_maybe_hidden ON memories(namespace)
    WHERE superseded_by IS NOT NULL OR expires_at IS NOT NULL
    """,
    """
    -- A memory is indexed with the memory written just before it in its namespace ("context", weighted
    -- lower at query time): agents write in streams, and the words that make a memory findable are often
    -- in the one before it. This lifted LoCoMo keyword recall@10 from 0.62 to 0.70 (bench/RESULTS.md).
    -- The table keeps its own copy of the text so a row can be deleted by rowid alone. `ns` holds one token
    -- naming the namespace ('ns' + hex of its UTF-8), so a search is confined to its namespace inside FTS5
    -- and never has to join and score other namespaces' matches.
    CREATE VIRTUAL TABLE memories_fts USING fts5(text, context, ns, tokenize='porter unicode61')
    """,
    """
    -- Every process replays this log before it serves a recall, so vectors written or deleted by
    -- another process reach its in-memory index without a restart.
    CREATE TABLE changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        pk INTEGER NOT NULL,
        op TEXT NOT NULL,
        namespace TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)
    """,
    """
    CREATE TRIGGER memories_ai AFTER INSERT ON memories BEGIN
        INSERT INTO memories_fts(rowid, text, context, ns) VALUES (
            new.pk,
            new.text,
            coalesce(
                (SELECT text FROM memories WHERE namespace = new.namespace AND pk < new.pk ORDER BY pk DESC LIMIT 1),
                ''
            ),
            'ns' || lower(hex(new.namespace))
        );
    END
    """,
    """
    CREATE TRIGGER memories_ad AFTER DELETE ON memories BEGIN
        DELETE FROM memories_fts WHERE rowid = old.pk;
        INSERT INTO changes(pk, op, namespace) VALUES (old.pk, 'delete', old.namespace);
    END
    """,
    """
    CREATE TRIGGER memories_au_text AFTER UPDATE OF text ON memories BEGIN
        UPDATE memories_fts SET text = new.text WHERE rowid = new.pk;
    END
    """,
    """
    CREATE TRIGGER memories_au_embedding AFTER UPDATE OF embedding, embedding_model ON memories
    WHEN new.embedding IS NOT old.embedding OR new.embedding_model IS NOT old.embedding_model BEGIN
        INSERT INTO changes(pk, op, namespace) VALUES (new.pk, 'embed', new.namespace);
    END
    """,
]


def _migration_1(db: sqlite3.Connection) -> None:
    # One statement at a time: executescript() would COMMIT the migration transaction half-way.
    for statement in _SCHEMA_1:
        db.execute(statement)


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migration_1]


# --- the store --------------------------------------------------------------------------------------------


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    message = str(exc).lower()
    return "locked" in message or "busy" in message


def _is_full(exc: sqlite3.Error) -> bool:
    message = str(exc).lower()
    return "full" in message or getattr(exc, "sqlite_errorcode", None) == 13  # SQLITE_FULL


class Store:
    """One connection, serialised by a lock, so the event loop and worker threads can share it."""

    def __init__(self, path: Path | str, *, create_parent: bool = False, max_page_count: int | None = None):
        self.path = Path(path)
        if str(path) != ":memory:":
            parent = self.path.parent
            if not parent.exists():
                if not create_parent:
                    raise StoreError(
                        f"the directory for the memory database does not exist: {parent} "
                        "(create it, or point AGENTCACHE_DB / --db somewhere else)"
                    )
                try:
                    parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreError(f"cannot create the data directory {parent}: {exc.strerror}") from None
            if self.path.exists() and not os.access(self.path, os.R_OK | os.W_OK):
                raise StoreError(f"the memory database {self.path} is not readable and writable by this user")
            if not self.path.exists() and not os.access(parent, os.W_OK):
                raise StoreError(f"cannot create the memory database: directory {parent} is not writable")
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the memory database {self.path}: {exc}") from None
        try:
            self._configure(max_page_count)
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreError(
                f"cannot use the memory database {self.path}: {exc}. The file was left untouched; if it is "
                "damaged, move it aside (keep a copy) and restart, or restore it from a backup."
            ) from None

    # -- setup

    def _configure(self, max_page_count: int | None) -> None:
        db = self._db
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = self._retry(lambda: db.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        if str(mode).lower() != "wal" and str(self.path) != ":memory:":
            raise StoreError(f"could not switch {self.path} to WAL mode (got {mode!r})")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("PRAGMA temp_store = MEMORY")
        if max_page_count is not None:
            db.execute(f"PRAGMA max_page_count = {int(max_page_count)}")

    def _migrate(self) -> None:
        def run() -> None:
            with self.atomic() as db:
                db.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL)"
                )
                done = {v for (v,) in db.execute("SELECT version FROM schema_migrations")}
                for version, migration in enumerate(MIGRATIONS, start=1):
                    if version in done:
                        continue
                    migration(db)
                    db.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, time.time()))
                    log.info("applied schema migration %d to %s", version, self.path)

        self._retry(run)

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._db.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]

    # -- transactions

    def _retry(self, fn: Callable[[], T]) -> T:
        """Run fn, retrying while another process holds a lock the busy handler could not wait out."""
        deadline = time.monotonic() + BUSY_RETRY_S
        delay = 0.005
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    @contextmanager
    def atomic(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE), or a savepoint when nested."""
        with self._lock:
            db = self._db
            if db.in_transaction:
                name = f"sp_{secrets.token_hex(4)}"
                db.execute(f"SAVEPOINT {name}")
                try:
                    yield db
                except BaseException:
                    db.execute(f"ROLLBACK TO {name}")
                    db.execute(f"RELEASE {name}")
                    raise
                db.execute(f"RELEASE {name}")
                return
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            try:
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn in one write transaction, retried as a whole if the database is busy."""

        def attempt() -> T:
            with self.atomic() as db:
                return fn(db)

        try:
            return self._retry(attempt)
        except sqlite3.Error as exc:
            if _is_full(exc):
                raise StoreFullError(
                    f"the memory database {self.path} is full (disk or page limit); nothing was written"
                ) from None
            raise

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def attempt() -> T:
            with self._lock:
                return fn(self._db)

        return self._retry(attempt)

    # -- memories

    def insert_or_merge(
        self,
        *,
        namespace: str,
        text: str,
        tags: list[str],
        importance: float,
        metadata: dict[str, Any],
        expires_at: float | None,
        now: float | None = None,
    ) -> tuple[str, bool]:
        """Store a memory; the same normalised text in the same namespace returns the existing id.

        On a duplicate the existing memory is refreshed rather than duplicated: tags are merged, the higher
        importance and the newer metadata keys win, the new TTL applies, and it is no longer superseded.
        """
        digest = content_hash(text)
        now = time.time() if now is None else now

        def txn(db: sqlite3.Connection) -> tuple[str, bool]:
            existing = db.execute(
                "SELECT pk, id, tags, importance, metadata FROM memories WHERE namespace = ? AND content_hash = ?",
                (namespace, digest),
            ).fetchone()
            if existing is None:
                memory_id = new_id()
                db.execute(
                    "INSERT INTO memories (id, namespace, text, content_hash, tags, importance, metadata, "
                    "created_at, updated_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        memory_id,
                        namespace,
                        text,
                        digest,
                        json.dumps(tags, ensure_ascii=False),
                        importance,
                        json.dumps(metadata, ensure_ascii=False),
                        now,
                        now,
                        expires_at,
                    ),
                )
                return memory_id, False
            pk, memory_id, old_tags, old_importance, old_metadata = existing
            merged_tags = list(dict.fromkeys([*json.loads(old_tags), *tags]))
            merged_metadata = {**json.loads(old_metadata), **metadata}
            db.execute(
                "UPDATE memories SET tags = ?, importance = ?, metadata = ?, updated_at = ?, expires_at = ?, "
                "superseded_by = NULL WHERE pk = ?",
                (
                    json.dumps(merged_tags, ensure_ascii=False),
                    max(old_importance, importance),
                    json.dumps(merged_metadata, ensure_ascii=False),
                    now,
                    expires_at,
                    pk,
                ),
            )
            return memory_id, True

        return self.write(txn)

    def get_by_pks(self, pks: Sequence[int]) -> dict[int, MemoryRow]:
        if not pks:
            return {}

        def q(db: sqlite3.Connection) -> dict[int, MemoryRow]:
            out: dict[int, MemoryRow] = {}
            for chunk in _chunks(list(pks), 500):
                marks = ",".join("?" * len(chunk))
                for r in db.execute(f"SELECT {_ROW_COLUMNS} FROM memories WHERE pk IN ({marks})", chunk):
                    out[r[0]] = _row(r)
            return out

        return self.read(q)

    def get_by_ids(self, ids: Sequence[str]) -> list[MemoryRow]:
        def q(db: sqlite3.Connection) -> list[MemoryRow]:
            out: list[MemoryRow] = []
            for chunk in _chunks(list(ids), 500):
                marks = ",".join("?" * len(chunk))
                out.extend(
                    _row(r) for r in db.execute(f"SELECT {_ROW_COLUMNS} FROM memories WHERE id IN ({marks})", chunk)
                )
            return out

        return self.read(q)

    def live_pks(self, namespace: str, pks: Sequence[int], filters: Filters, now: float) -> set[int]:
        """The subset of pks (all of them memories of this namespace) that a recall may return now."""
        if not pks:
            return set()
        if not filters.active and not self._may_hide(namespace):
            return set(pks)  # nothing in the namespace is superseded or has an expiry: all are live
        extra, params = filters.sql()

        def q(db: sqlite3.Connection) -> set[int]:
            out: set[int] = set()
            for chunk in _chunks(list(pks), 500):
                marks = ",".join("?" * len(chunk))
                out.update(
                    pk
                    for (pk,) in db.execute(
                        f"SELECT m.pk FROM memories m WHERE m.pk IN ({marks}) AND m.namespace = ? "
                        f"AND m.superseded_by IS NULL AND (m.expires_at IS NULL OR m.expires_at > ?){extra}",
                        [*chunk, namespace, now, *params],
                    )
                )
            return out

        return self.read(q)

    def _may_hide(self, namespace: str) -> bool:
        return self.read(
            lambda db: (
                db.execute(
                    "SELECT 1 FROM memories WHERE namespace = ? "
                    "AND (superseded_by IS NOT NULL OR expires_at IS NOT NULL) LIMIT 1",
                    (namespace,),
                ).fetchone()
                is not None
            )
        )

    def keyword_search(
        self, namespace: str, match: str, limit: int, filters: Filters, now: float, context_weight: float = 0.4
    ) -> list[tuple[int, float]]:
        """FTS5 BM25 within a namespace; returns (pk, score) with higher scores better.

        context_weight is the BM25 column weight of the preceding memory's text (the memory's own is 1).
        """
        terms = f"text : ({match})" if context_weight == 0 else f"({match})"  # 0: own words only, plain BM25
        match = f'ns : "{namespace_token(namespace)}" AND {terms}'
        weights = (1.0, float(context_weight), 0.0)
        if not filters.active:
            # Rank inside FTS5 alone, then drop the rare superseded or expired rows; only if that left the
            # page short while more matches may exist, fall back to filtering every match.
            ranked = self.read(
                lambda db: db.execute(
                    "SELECT rowid, bm25(memories_fts, ?, ?, ?) AS score FROM memories_fts "
                    "WHERE memories_fts MATCH ? ORDER BY score LIMIT ?",
                    [*weights, match, limit],
                ).fetchall()
            )
            live = self.live_pks(namespace, [pk for pk, _ in ranked], filters, now)
            if len(live) == len(ranked) or len(ranked) < limit:
                return [(pk, -score) for pk, score in ranked if pk in live]
        extra, params = filters.sql()

        def q(db: sqlite3.Connection) -> list[tuple[int, float]]:
            return [
                (pk, -score)
                for pk, score in db.execute(
                    "SELECT m.pk, bm25(memories_fts, ?, ?, ?) AS score FROM memories_fts "
                    "JOIN memories m ON m.pk = memories_fts.rowid "
                    "WHERE memories_fts MATCH ? AND m.namespace = ? AND m.superseded_by IS NULL "
                    f"AND (m.expires_at IS NULL OR m.expires_at > ?){extra} "
                    "ORDER BY score LIMIT ?",
                    [*weights, match, namespace, now, *params, limit],
                )
            ]

        return self.read(q)

    def informative_terms(self, terms: list[str]) -> list[str]:
        """Drop terms found in more than half of all memories, unless that would drop them all.

        FTS5's BM25 gives such a term an IDF of 1e-6 (its idf formula is clamped at zero), so it barely
        changes a score, yet it makes the OR query match and score most of the index: at 10k memories the
        common words of a query made it match 63% of rows. Small stores keep every term: there a memory
        matching only a common word may be the only keyword match there is.
        """

        def q(db: sqlite3.Connection) -> list[str]:
            total = db.execute("SELECT count(*) FROM memories").fetchone()[0]
            if total < PRUNE_TERMS_FROM_ROWS:
                return terms
            kept = [
                t
                for t in terms
                if db.execute("SELECT count(*) FROM memories_fts WHERE memories_fts MATCH ?", (f'"{t}"',)).fetchone()[0]
                <= total / 2
            ]
            return kept or terms

        return self.read(q)

    def touch(self, pks: Sequence[int], now: float | None = None) -> None:
        """Record that these memories were recalled."""
        if not pks:
            return
        now = time.time() if now is None else now

        def txn(db: sqlite3.Connection) -> None:
            db.executemany(
                "UPDATE memories SET access_count = access_count + 1, last_accessed_at = ? WHERE pk = ?",
                [(now, pk) for pk in pks],
            )

        self.write(txn)

    def delete_pks(self, pks: Sequence[int]) -> list[str]:
        def txn(db: sqlite3.Connection) -> list[str]:
            deleted: list[str] = []
            for chunk in _chunks(list(pks), 500):
                marks = ",".join("?" * len(chunk))
                deleted.extend(
                    i for (i,) in db.execute(f"DELETE FROM memories WHERE pk IN ({marks}) RETURNING id", chunk)
                )
            return deleted

        return self.write(txn) if pks else []

    def supersede(self, pairs: Iterable[tuple[int, str]]) -> None:
        """Mark each (older pk) as superseded by (newer id)."""

        def txn(db: sqlite3.Connection) -> None:
            db.executemany(
                "UPDATE memories SET superseded_by = ?, updated_at = ? WHERE pk = ? AND superseded_by IS NULL",
                [(newer, time.time(), pk) for pk, newer in pairs],
            )

        self.write(txn)

    def select_pks(self, where: str, params: Sequence[Any]) -> list[tuple[int, str]]:
        """(pk, id) of memories matching a WHERE clause built by this package (never by a caller)."""
        return self.read(
            lambda db: [
                (pk, i) for pk, i in db.execute(f"SELECT pk, id FROM memories m WHERE {where} ORDER BY pk", params)
            ]
        )

    # -- embeddings

    def pending_embeddings(self, model_id: str, limit: int, after_pk: int = 0) -> list[tuple[int, str, str]]:
        """(pk, text, content_hash) of memories with no embedding from model_id, oldest first."""
        return self.read(
            lambda db: db.execute(
                "SELECT pk, text, content_hash FROM memories WHERE embedding_model != ? AND pk > ? ORDER BY pk LIMIT ?",
                (model_id, after_pk, limit),
            ).fetchall()
        )

    def count_pending_embeddings(self, model_id: str) -> int:
        return self.read(
            lambda db: db.execute("SELECT count(*) FROM memories WHERE embedding_model != ?", (model_id,)).fetchone()[0]
        )

    def write_embeddings(self, model_id: str, items: Sequence[tuple[int, str, bytes]]) -> int:
        """Store (pk, content_hash, float32 blob); a row whose text changed meanwhile is left pending."""

        def txn(db: sqlite3.Connection) -> int:
            return db.executemany(  # rowcount excludes the change-log rows the trigger writes
                "UPDATE memories SET embedding = ?, embedding_model = ? "
                "WHERE pk = ? AND content_hash = ? AND embedding_model != ?",
                [(blob, model_id, pk, digest, model_id) for pk, digest, blob in items],
            ).rowcount

        return self.write(txn)

    def iter_embeddings(self, model_id: str, batch: int = 5000) -> Iterator[list[tuple[int, str, bytes]]]:
        """(pk, namespace, blob) of every memory embedded by model_id, in batches, for loading the index."""
        last = 0
        while True:
            rows = self.read(
                lambda db, last=last: db.execute(
                    "SELECT pk, namespace, embedding FROM memories WHERE embedding_model = ? AND pk > ? "
                    "ORDER BY pk LIMIT ?",
                    (model_id, last, batch),
                ).fetchall()
            )
            if not rows:
                return
            yield rows
            last = rows[-1][0]

    def embeddings_for(self, model_id: str, pks: Sequence[int]) -> list[tuple[int, str, bytes]]:
        def q(db: sqlite3.Connection) -> list[tuple[int, str, bytes]]:
            out: list[tuple[int, str, bytes]] = []
            for chunk in _chunks(list(pks), 500):
                marks = ",".join("?" * len(chunk))
                out.extend(
                    db.execute(
                        f"SELECT pk, namespace, embedding FROM memories WHERE pk IN ({marks}) AND embedding_model = ?",
                        [*chunk, model_id],
                    ).fetchall()
                )
            return out

        return self.read(q)

    # -- change log

    def last_change(self) -> int:
        return self.read(lambda db: db.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0])

    def changes_since(self, seq: int, limit: int = 10_000) -> tuple[list[Change], bool]:
        """Changes after seq, and whether the log still reaches back to seq (False: it was pruned past it)."""

        def q(db: sqlite3.Connection) -> tuple[list[Change], bool]:
            rows = db.execute(
                "SELECT seq, pk, op, namespace FROM changes WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
            ).fetchall()
            oldest = db.execute("SELECT min(seq) FROM changes").fetchone()[0]
            complete = oldest is None or oldest <= seq + 1
            return [Change(*r) for r in rows], complete

        return self.read(q)

    def prune_changes(self, keep_last: int = 100_000) -> int:
        """Drop old change-log rows; a process that lagged past them reloads its index in full."""

        def txn(db: sqlite3.Connection) -> int:
            top = db.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]
            return db.execute("DELETE FROM changes WHERE seq <= ?", (top - keep_last,)).rowcount

        return self.write(txn)

    # -- maintenance and stats

    def fts_ok(self) -> bool:
        """The keyword index is internally sound and holds exactly the stored memories."""

        def q(db: sqlite3.Connection) -> bool:
            db.execute("INSERT INTO memories_fts(memories_fts) VALUES ('integrity-check')")
            missing = db.execute(
                "SELECT count(*) FROM memories m WHERE NOT EXISTS (SELECT 1 FROM memories_fts f WHERE f.rowid = m.pk)"
            ).fetchone()[0]
            extra = db.execute(
                "SELECT count(*) FROM memories_fts f WHERE NOT EXISTS (SELECT 1 FROM memories m WHERE m.pk = f.rowid)"
            ).fetchone()[0]
            return missing == 0 and extra == 0

        try:
            return self.read(q)
        except sqlite3.DatabaseError as exc:
            log.warning("keyword index check failed: %s", exc)
            return False

    def rebuild_fts(self) -> None:
        """Rebuild the keyword index from the memories table (the source of truth)."""

        def txn(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM memories_fts")
            db.execute(
                "INSERT INTO memories_fts(rowid, text, context, ns) SELECT pk, text, "
                "coalesce(lag(text) OVER (PARTITION BY namespace ORDER BY pk), ''), "
                "'ns' || lower(hex(namespace)) FROM memories"
            )

        self.write(txn)

    def neighbours(
        self, namespace: str, pks: Sequence[int], width: int = 1
    ) -> dict[int, list[tuple[int | None, int | None]]]:
        """For each pk, the memories written 1..width places before and after it in its namespace."""
        if width < 1 or not pks:
            return {int(pk): [] for pk in pks}
        # One statement for all pks: the correlated lookups run inside SQLite on the namespace index.
        lookups = ", ".join(
            f"(SELECT pk FROM memories WHERE namespace = ?1 AND pk < j.value ORDER BY pk DESC LIMIT 1 OFFSET {k}), "
            f"(SELECT pk FROM memories WHERE namespace = ?1 AND pk > j.value ORDER BY pk LIMIT 1 OFFSET {k})"
            for k in range(width)
        )

        def q(db: sqlite3.Connection) -> dict[int, list[tuple[int | None, int | None]]]:
            rows = db.execute(
                f"SELECT j.value, {lookups} FROM json_each(?2) AS j",
                (namespace, json.dumps([int(pk) for pk in pks])),
            )
            return {row[0]: [(row[1 + 2 * k], row[2 + 2 * k]) for k in range(width)] for row in rows}

        return self.read(q)

    def counts_by_namespace(self) -> dict[str, int]:
        return self.read(
            lambda db: dict(
                db.execute("SELECT namespace, count(*) FROM memories GROUP BY namespace ORDER BY namespace")
            )
        )

    def checkpoint(self) -> tuple[int, int, int]:
        """Copy the WAL into the database and truncate it to zero bytes."""
        return self.read(lambda db: tuple(db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()))

    def integrity_check(self) -> str:
        return self.read(lambda db: db.execute("PRAGMA integrity_check").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
