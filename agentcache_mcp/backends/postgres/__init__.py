"""The PostgreSQL backend: memories, a tsvector keyword index and pgvector vectors in one database, shared by
any number of stateless replicas (AGENTCACHE_DB=postgresql://...). Needs PostgreSQL 15+ with pgvector 0.8+.

No replica keeps state that a result depends on but a copy kept current: searches read the shared tables (the
vectors from each replica's in-memory copy, matrix.py, caught up from the database before each search), the
embedding backlog is claimed row by row with a lease (`FOR UPDATE SKIP LOCKED`), and work that must run once at
a time (migrations, the auto-forget sweep, the erase) takes an advisory lock.

What a forget leaves behind, measured on PostgreSQL 18.3 (tests/test_postgres_erasure.py): a DELETE only
marks the row version dead. Its bytes stay in the table's heap page, in the GIN index's entry tree (a GIN
index keeps a deleted memory's lexemes as keys even after VACUUM empties their posting lists), in older row
versions of the next memory (whose context terms the delete re-indexed) and in the TOAST table for long texts,
until the page is rewritten. Plain VACUUM is not enough: it frees the space but leaves a dead tuple's bytes in
place when no live tuple is moved over them (measured: a deleted row at the page's free-space boundary
survived VACUUM), and it never removes GIN keys. So every DELETE statement counts its rows in the meta table
(how many, since when: what stats show), and the erase rewrites: `VACUUM (FULL)` of the memories table, which
writes the table, its TOAST table and every index anew from the live rows and unlinks the old files. The
vector tables are not rewritten (an HNSW index takes minutes to build at 100k): a deleted memory's vector and
content hash (deleted with it by the cascade) stay in their pages until autovacuum frees them and new rows
overwrite them.

VACUUM FULL holds an ACCESS EXCLUSIVE lock on the table while it runs: every replica's calls wait for it. So
it does not run on every delete: AGENTCACHE_PG_ERASE says when (`daily`, the default: once a day at
AGENTCACHE_PG_ERASE_AT UTC, by one replica, if anything was deleted since the last erase, and at the first
check after a start when a day's erase was missed; `after-forget`: after each auto-forget sweep (with it off, each
maintenance run on its schedule) and at shutdown; `manual`: only `agentcache-mcp erase`). It asks for the lock with a short lock_timeout
(ERASE_LOCK_TIMEOUT_S, doubled at each try up to ERASE_LOCK_TIMEOUT_MAX_S) and retries: while it waits, calls
queue behind its request, so it never waits long behind a long statement. What no backend can erase: the WAL (pg_wal) keeps the text until its segment is
recycled and overwritten, and so does any WAL archive, streaming replica or backup taken meanwhile; the
unlinked files' blocks stay on the disk device until the filesystem reuses them. ANALYZE statistics are
switched off for the columns holding the user's words, so pg_statistic never samples them.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg.errors
from psycopg import sql

from ...config import mask_url
from ...memory.model import DAY, iso
from ...memory.ports import EraseReport, StoreError
from ..auth_state import Conflict, SqlAuthState
from .connection import Connection, Database, behind_a_pooler, connect, first_line, lock_key
from .keywords import TsvectorKeywords
from .matrix import MATRIX_MAX_ROWS, PgMatrixVectors, prune_vector_changes
from .repository import PgEmbeddings, PgMemories
from .schema import TERMS_INDEX, build_missing_indexes, migrate, vector_table_name
from .vectors import PgVectors

__all__ = ["PgAuthState", "PostgresBackend"]

log = logging.getLogger(__name__)

ERASE_LOCK_TIMEOUT_S = 0.2
"""How long the erase's VACUUM FULL first waits for the memories table's lock before it gives up and tries
again: every call that comes after its request queues behind it meanwhile, so this is what one try can add
to them. Each try waits twice as long as the one before, up to ERASE_LOCK_TIMEOUT_MAX_S: under a steady
stream of recalls the lock is free only once every statement that holds it has ended (measured at 100k with
8 clients recalling on a loaded machine: 30 tries of 0.2 s never found it free)."""
ERASE_LOCK_TIMEOUT_MAX_S = 2.0
ERASE_ATTEMPTS = 30
"""Tries for the lock (a second apart, then more) before the erase is postponed: to the next check."""
BULK_LOAD_LOCK = "bulk_load"
"""Held by an import that loads without the HNSW index, and by a start that builds missing indexes: one at a
time, and a replica starting during such an import leaves the index to the import's end."""
BULK_LOAD_RATIO = 4
"""An import drops the model's HNSW index and builds it after loading when the vector table holds at most this
many times the memories it is about to add. Measured (bench/pg_write.py, 10k with vectors into an empty
store, 2 shared cores at load 6-8): with the index the import took 86.9 s (8.7 ms a memory); without it the
load took 7.1-8.2 s (0.8 ms a memory) and the builds after it 5.9-7.8 s (HNSW ~0.65 ms per vector of the
whole table). So the rebuild pays while the table holds up to ~10x the load; 4 keeps a margin, as replicas
recall by exact scan until the build ends."""
BULK_LOAD_TERMS_INDEX = True
"""Drop the keyword (GIN) index too, on the same rule for the memories table, and build it after (CONCURRENTLY):
measured at 10k (3 runs, load 6), the load took 7.4 s without it against 9.7 s with it."""
ERASE_RETRY_S = 1.0
"""The pause before the second try; it grows by this much per try, to 5 s at most."""
POSTPONED_RETRY_S = 600.0
"""A scheduled erase postponed (the table stayed busy) is tried again this much later."""
_KEPT_DEAD = re.compile(r"(\d+) dead row versions cannot be removed yet")
"""VACUUM (FULL, VERBOSE)'s count of the dead row versions it copied (the server's English messages)."""
META_KEYS = (
    "erase_generation",
    "erased_generation",
    "erase_pending_count",
    "erase_pending_since",
    "last_erase_at",
    "last_erase_locked_s",
)


@dataclass(frozen=True)
class EraseStatus:
    """What the meta table says about deletes not erased yet (kept by the DELETE statement trigger)."""

    generation: int
    erased: int
    count: int | None
    """Memories deleted since the last erase; None: unknown (deleted before schema 2 counted them)."""
    since: float | None
    last_erase_at: float | None
    last_erase_locked_s: float | None

    @property
    def pending(self) -> bool:
        return self.generation > self.erased

    @classmethod
    def read(cls, conn: Connection) -> EraseStatus:
        rows = dict(conn.execute("SELECT key, value FROM meta WHERE key = ANY(%s)", (list(META_KEYS),)).fetchall())

        def number(key: str) -> float | None:
            value = rows.get(key) or ""
            return float(value) if value else None

        return cls(
            generation=int(rows.get("erase_generation", 0)),
            erased=int(rows.get("erased_generation", 0)),
            count=int(rows["erase_pending_count"]) if rows.get("erase_pending_count", "0") != "" else None,
            since=number("erase_pending_since"),
            last_erase_at=number("last_erase_at"),
            last_erase_locked_s=number("last_erase_locked_s"),
        )


class PgAuthState(SqlAuthState):
    """The OAuth tables (schema migration 4), shared by every replica. A code or token is inserted while its
    grant row is held (FOR KEY SHARE, and the foreign key): a concurrent revoke waits for it, then deletes it."""

    mark = "%s"
    lock_row = " FOR KEY SHARE"

    def conflict(self, exc: Exception) -> Conflict:
        if isinstance(exc, psycopg.errors.UniqueViolation):
            return "unique"
        if isinstance(exc, psycopg.errors.ForeignKeyViolation):
            return "foreign"
        return None


@contextmanager
def advisory_lock(conn: Connection, name: str) -> Iterator[bool]:
    """A session-level advisory lock called `name` on `conn` (autocommit), held for the block if no other
    session holds it: yields whether it is held. The one place the backend takes such a lock."""
    row = conn.execute(f"SELECT pg_try_advisory_lock({lock_key('%s')})", (name,)).fetchone()
    held = bool(row and row[0])
    try:
        yield held
    finally:
        if held and not conn.closed:
            conn.execute(f"SELECT pg_advisory_unlock({lock_key('%s')})", (name,))


class PostgresBackend:
    batch_pause_s = 0.0
    """No pause between an import's batches: a write waiting for a namespace's advisory lock is queued, and
    granted it before the next batch's request (PostgreSQL grants conflicting lock requests in order). The
    SQLite pause cost 24 s of a 100k import's 55 s load here."""

    def __init__(
        self,
        url: str,
        model_id: str,
        *,
        pool_size: int = 8,
        erase: str = "daily",
        erase_at: str = "03:00",
        erase_attempts: int = ERASE_ATTEMPTS,
        vector_search: str = "auto",
    ):
        bootstrap = connect(url)  # StoreUnavailable with a one-line reason if the server cannot be reached
        try:
            self.location = mask_url(url)
            self.schema_version = migrate(bootstrap, self.location)
            self.server_version = bootstrap.info.server_version
            bootstrap.autocommit = True
            # Behind a transaction-mode pooler a session lock may stay on a server connection the pooler hands
            # to another client: no bulk load drops an index there (bulk_load), and a start through one leaves
            # an index a direct import left out to the next start over a direct connection.
            if not behind_a_pooler(bootstrap):
                with advisory_lock(bootstrap, BULK_LOAD_LOCK) as alone:
                    if alone:
                        build_missing_indexes(bootstrap, self.location, "an import that was stopped left it out")
                    else:
                        log.info("an import is loading %s in bulk: it builds the vector index when it ends", self.location)
        finally:
            bootstrap.close()
        self.model_id = model_id
        self.erase_mode = erase
        hours, minutes = erase_at.split(":")
        self.erase_at = erase_at
        self._erase_at_s = int(hours) * 3600 + int(minutes) * 60
        self.erase_attempts = erase_attempts
        self.db = Database(url, pool_size=pool_size)
        self.memories = PgMemories(self.db)
        self.embeddings = PgEmbeddings(self.db)
        self.keywords = TsvectorKeywords(self.db)
        self.index_vectors = PgVectors(self.db, self.embeddings, model_id)
        self.vector_search = vector_search
        self.vectors: PgVectors | PgMatrixVectors
        if vector_search == "index":
            self.vectors = self.index_vectors
        else:
            self.vectors = PgMatrixVectors(
                self.db,
                self.memories,
                self.embeddings,
                self.index_vectors,
                max_rows=None if vector_search == "memory" else MATRIX_MAX_ROWS,
            )
        self.auth_state = PgAuthState(self.db)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "postgres",
            "db_path": self.location,
            "schema_version": self.schema_version,
            "server_version": self.server_version,
            "keyword_index": "tsvector + GIN (in the database, always current)",
            "vector_index": self._vector_index(),
            "erasure": self.erasure(time.time()),
        }

    def _vector_index(self) -> str:
        hnsw = "pgvector HNSW (cosine; exact for small namespaces)"
        if isinstance(self.vectors, PgMatrixVectors):
            if self.vectors.in_memory:
                return f"in this replica's memory (exact cosine, float16; AGENTCACHE_PG_VECTOR_SEARCH={self.vector_search})"
            return f"{hnsw} (AGENTCACHE_PG_VECTOR_SEARCH={self.vector_search}: not in memory)"
        return hnsw

    def erasure(self, now: float) -> dict[str, Any]:
        """What stats show: the setting, how many forgotten memories' bytes may still be in the database files
        and since when, when the next erase runs, and the last one."""
        status = self.db.read(EraseStatus.read)
        if self.erase_mode == "daily":
            setting = f"daily at {self.erase_at} UTC"
            if self._overdue(status, now):
                next_erase = "overdue: at a running server's next check, or run `agentcache-mcp erase`"
            else:
                next_erase = iso(self._slot_before(now) + DAY)
                if not status.pending:
                    next_erase += " (if anything is forgotten by then)"
        elif self.erase_mode == "after-forget":
            setting = "after each auto-forget sweep (or, with auto-forget off, each maintenance run), and at shutdown"
            next_erase = "after the next auto-forget sweep (or maintenance run), or a server's shutdown"
        else:
            setting = "manual"
            next_erase = "only when `agentcache-mcp erase` is run"
        return {
            "setting": setting,
            # None: deleted before this version kept the count (an upgraded store), until the next erase
            "forgotten_on_disk": status.count if status.pending else 0,
            "forgotten_since": iso(status.since) if status.pending and status.since is not None else None,
            "next_erase": next_erase,
            "last_erase": iso(status.last_erase_at) if status.last_erase_at is not None else None,
            "last_erase_locked_s": status.last_erase_locked_s,
        }

    @contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """An advisory lock on one pooled connection, held for the block (Database.exclusive): if the process
        dies, the server ends its transaction and the lock is free for another replica."""
        with self.db.exclusive(name) as held:
            yield held

    @contextmanager
    def bulk_load(self, expected_rows: int) -> Iterator[None]:
        """Drop the model's HNSW index if the load is large for the table (BULK_LOAD_RATIO), and build it again
        at the end, raised or not (one plain CREATE INDEX, then ANALYZE). Under the BULK_LOAD_LOCK session lock on
        a connection of its own, held throughout: if the process dies, its session ends, and the next start of
        any replica builds what is missing. Another import (or start) holding the lock: load with the index."""
        if self.db.pooled:  # its session lock and settings cannot cross a transaction-mode pooler: load indexed
            yield
            return
        with self.db.session() as conn, advisory_lock(conn, BULK_LOAD_LOCK) as alone:
            table = vector_table_name(self.model_id)
            if not alone or expected_rows <= 0:
                yield
                return
            row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
            exists = bool(row and row[0])
            held = 0
            if exists:
                [(held,)] = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchall()
            if held > BULK_LOAD_RATIO * expected_rows:
                yield
                return
            conn.execute("SET statement_timeout = 0")  # building the index may take longer than a call may
            try:
                drop = [table + "_hnsw"] if exists else []
                if BULK_LOAD_TERMS_INDEX:
                    [(memories,)] = conn.execute("SELECT count(*) FROM memories").fetchall()
                    if memories <= BULK_LOAD_RATIO * expected_rows:
                        drop.append(TERMS_INDEX)
                for name in drop:
                    try:
                        conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(name)))
                    except psycopg.errors.LockNotAvailable:  # searches kept the table busy: load with this one
                        log.info("the table of index %s was busy: importing into %s with it", name, self.location)
                self.memories.defer_vector_index = True
                log.info("importing %d memories into %s without the vector index; it is built at the end", expected_rows, self.location)
                yield
            finally:
                self.memories.defer_vector_index = False
                if not conn.closed:
                    build_missing_indexes(conn, self.location, "after a bulk import", level=logging.INFO)
                    conn.execute("RESET statement_timeout")

    def erase_pending(self) -> bool:
        """Did a delete happen since the last erase?"""
        return self.db.read(EraseStatus.read).pending

    def _slot_before(self, now: float) -> float:
        """The latest scheduled erase time (erase_at, UTC) at or before `now`."""
        slot = math.floor(now / DAY) * DAY + self._erase_at_s
        return slot if slot <= now else slot - DAY

    def _overdue(self, status: EraseStatus, now: float) -> bool:
        """Something deleted before the latest scheduled time is still on disk (no process ran the erase then)."""
        return status.pending and (status.since is None or status.since <= self._slot_before(now))

    def scheduled_erase(self, now: float) -> float | None:
        if self.erase_mode != "daily":
            return None
        if self._overdue(self.db.read(EraseStatus.read), now):
            report = self.erase()
            if not report.erased and report.attempts:
                return now + POSTPONED_RETRY_S  # the table stayed busy: soon again, not tomorrow
        return self._slot_before(now) + DAY

    def erase(self, attempts: int | None = None) -> EraseReport:
        """Rewrite what deletes left behind (see the module docstring) if a delete happened since the last
        erase. One replica at a time; the table's lock is asked for `attempts` times (ERASE_ATTEMPTS) with a
        short timeout, then the erase is postponed (erased False)."""
        attempts = self.erase_attempts if attempts is None else attempts
        started = time.monotonic()
        if self.db.pooled:
            # VACUUM runs outside a transaction with session settings (its lock timeout) and a session lock:
            # through a transaction-mode pooler each statement may land on another server connection, and a
            # pooler in session mode cannot be told from one in transaction mode (both hand out their own
            # backend pid), so no pooled replica erases.
            log.warning(
                "erase postponed: %s is reached through a connection pooler; run `agentcache-mcp erase` with a "
                "direct URL to the server",
                self.location,
            )
            return EraseReport(
                False,
                "postponed: this store is reached through a connection pooler, through which the erase cannot run "
                "safely (VACUUM FULL needs one server session); run `agentcache-mcp erase` with a direct URL to "
                "the server",
            )
        # One connection for the lock and the work: a sweep calls this while it holds one for its own lock,
        # and the pool may have only two.
        with self.db.session() as conn, advisory_lock(conn, "erase") as alone:
            if not alone:
                return EraseReport(False, "another process is erasing this store right now")
            try:
                return self._erase(conn, attempts, started)
            except psycopg.Error as exc:
                raise StoreError(f"erasing deleted memories in {self.location} failed: {first_line(exc)}") from None
            finally:
                if not conn.closed:
                    conn.execute("RESET lock_timeout")
                    conn.execute("RESET statement_timeout")

    def _erase(self, conn: Connection, attempts: int, started: float) -> EraseReport:
        before = EraseStatus.read(conn)
        if not before.pending:
            return EraseReport(False, "nothing to erase: no memory was forgotten since the last erase")
        [(snapshot_at,)] = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchall()
        conn.execute("SET statement_timeout = 0")  # a large table's rewrite may take longer than a call may
        kept: list[int] = []
        """Row versions the rewrite kept though dead (VERBOSE's detail: "N dead row versions cannot be removed yet")."""

        def notice(diagnostic: psycopg.errors.Diagnostic) -> None:
            found = _KEPT_DEAD.search(diagnostic.message_detail or "")
            if found:
                kept.append(int(found.group(1)))

        tried = 0
        while True:
            tried += 1
            wait_s = min(ERASE_LOCK_TIMEOUT_MAX_S, ERASE_LOCK_TIMEOUT_S * 2 ** (tried - 1))
            conn.execute(f"SET lock_timeout = '{int(wait_s * 1000)}ms'")
            rewrite_started = time.monotonic()
            kept.clear()
            conn.add_notice_handler(notice)
            try:
                conn.execute("VACUUM (FULL, VERBOSE) memories")
                break
            except psycopg.errors.LockNotAvailable:
                if tried >= attempts:
                    log.warning("erase postponed: the memories table stayed busy (%d tries for its lock)", tried)
                    return EraseReport(
                        False,
                        f"postponed: the memories table stayed busy ({tried} tries for its lock); nothing was "
                        "rewritten, try again later",
                        attempts=tried,
                        seconds=time.monotonic() - started,
                    )
                time.sleep(min(5.0, ERASE_RETRY_S * tried))
            finally:
                conn.remove_notice_handler(notice)
        locked_s = time.monotonic() - rewrite_started
        conn.execute("RESET lock_timeout")
        if sum(kept):
            # VACUUM FULL copies a dead row version that a transaction still running may see (one that began
            # before the delete, on any table of this database, or a standby's hot_standby_feedback): its bytes
            # are in the new files. Not erased: the deletes stay pending, and the next try rewrites again.
            log.warning(
                "erase postponed: %d deleted or updated row versions were kept, still visible to a transaction "
                "older than them",
                sum(kept),
            )
            return EraseReport(
                False,
                f"postponed: the rewrite had to keep {sum(kept)} deleted or updated row versions that a transaction "
                "older than them may still read (a long transaction in this database, or a standby's "
                "hot_standby_feedback); nothing is reported erased, try again once it ended",
                attempts=tried,
                seconds=time.monotonic() - started,
            )
        # The vector tables are left to autovacuum: a plain VACUUM does not overwrite a dead row either, and
        # at 100k memories the HNSW index's VACUUM ran for more than 5 minutes after 2,000 deletes.
        with conn.transaction():
            # Locked, so a delete committing now waits, and is counted as not erased (it may have been).
            conn.execute("SELECT 1 FROM meta WHERE key = ANY(%s) FOR UPDATE", (list(META_KEYS),))
            now = EraseStatus.read(conn)
            later = now.generation > before.generation  # deletes since the snapshot: maybe after the rewrite
            updates = {
                "erased_generation": str(max(now.erased, before.generation)),
                "erase_pending_count": (
                    "0" if not later else "" if now.count is None or before.count is None else str(now.count - before.count)
                ),
                "erase_pending_since": repr(snapshot_at) if later else "",
                "last_erase_at": repr(time.time()),
                "last_erase_locked_s": f"{locked_s:.3f}",
            }
            conn.execute(
                "UPDATE meta SET value = (%s::jsonb) ->> key WHERE key = ANY(%s)",
                (json.dumps(updates), list(updates)),
            )
        seconds = time.monotonic() - started
        count = before.count
        log.info(
            "erased what %s forgotten memories left in %s (VACUUM FULL: the table locked %.2f s, %d tries; %.2f s)",
            count if count is not None else "the",
            self.location,
            locked_s,
            tried,
            seconds,
        )
        what = f"{count} forgotten {'memory' if count == 1 else 'memories'}" if count else "forgotten memories"
        return EraseReport(
            True,
            f"rewrote the memories table, its TOAST table and indexes without the bytes of {what} "
            f"(VACUUM FULL; the table was locked {locked_s:.2f} s)",
            memories=count,
            locked_s=locked_s,
            seconds=seconds,
            attempts=tried,
        )

    def maintenance(self) -> None:
        if self.erase_mode == "after-forget":
            self.erase()
        self.auth_state.housekeeping()
        prune_vector_changes(self.db)

    def checkpoint(self) -> None:
        """Everything committed is durable already (the server's WAL); with AGENTCACHE_PG_ERASE=after-forget,
        drop what deletes left behind (one try for the lock: a shutdown does not wait for a busy table)."""
        if self.erase_mode == "after-forget":
            self.erase(attempts=1)

    def give_up_waits(self, after_s: float) -> None:
        self.db.give_up_waits(after_s)

    def close(self) -> None:
        self.db.close()
