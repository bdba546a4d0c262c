"""The PostgreSQL backend: memories, a tsvector keyword index and pgvector vectors in one database, shared by
any number of stateless replicas (AGENTCACHE_DB=postgresql://...). Needs PostgreSQL 15+ with pgvector 0.8+.

No replica keeps state that a result depends on: searches read the shared tables, the embedding backlog is
claimed row by row with a lease (`FOR UPDATE SKIP LOCKED`), and work that must run once at a time (migrations,
the auto-forget sweep, the erase) takes an advisory lock.

What a forget leaves behind, measured on PostgreSQL 18.3 (tests/test_postgres_erasure.py): a DELETE only
marks the row version dead. Its bytes stay in the table's heap page, in the GIN index's entry tree (a GIN
index keeps a deleted memory's lexemes as keys even after VACUUM empties their posting lists), in older row
versions of the next memory (whose context terms the delete re-indexed) and in the TOAST table for long texts,
until the page is rewritten. Plain VACUUM is not enough: it frees the space but leaves a dead tuple's bytes in
place when no live tuple is moved over them (measured: a deleted row at the page's free-space boundary
survived VACUUM), and it never removes GIN keys. So every DELETE statement raises an erase generation, and
`checkpoint()` (at shutdown) and `maintenance()` (after each auto-forget sweep) run the erase when it rose:
`VACUUM (FULL)` of the memories table, which writes the table, its TOAST table and every index anew from the
live rows and unlinks the old files, then plain VACUUM of the vector tables. VACUUM FULL holds an ACCESS
EXCLUSIVE lock on the table while it runs: every replica's calls wait for it (it gives up after 2 s waiting
for the lock, and the next erase tries again). What no backend can erase: the WAL (pg_wal) keeps the text
until its segment is recycled and overwritten, and so does any WAL archive, streaming replica or backup
taken meanwhile; the unlinked files' blocks stay on the disk device until the filesystem reuses them. ANALYZE
statistics are switched off for the columns holding the user's words, so pg_statistic never samples them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from ...config import mask_url
from ...memory.ports import StoreError
from .connection import Database, connect, first_line, lock_key
from .keywords import TsvectorKeywords
from .repository import PgEmbeddings, PgMemories
from .schema import migrate
from .vectors import PgVectors

__all__ = ["PostgresBackend"]

log = logging.getLogger(__name__)

ERASE_LOCK_TIMEOUT = "2s"


class PostgresBackend:
    def __init__(self, url: str, model_id: str, *, pool_size: int = 8):
        bootstrap = connect(url)  # StoreUnavailable with a one-line reason if the server cannot be reached
        try:
            self.location = mask_url(url)
            self.schema_version = migrate(bootstrap, self.location)
            self.server_version = bootstrap.info.server_version
        finally:
            bootstrap.close()
        self.db = Database(url, pool_size=pool_size)
        self.memories = PgMemories(self.db)
        self.embeddings = PgEmbeddings(self.db)
        self.keywords = TsvectorKeywords(self.db)
        self.vectors = PgVectors(self.db, self.embeddings, model_id)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "postgres",
            "db_path": self.location,
            "schema_version": self.schema_version,
            "server_version": self.server_version,
            "keyword_index": "tsvector + GIN (in the database, always current)",
            "vector_index": "pgvector HNSW (cosine; exact for small namespaces)",
        }

    @contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """An advisory lock on one pooled connection, held for the block (Database.exclusive): if the process
        dies, the server ends its transaction and the lock is free for another replica."""
        with self.db.exclusive(name) as held:
            yield held

    def erase_pending(self) -> bool:
        """Did a delete happen since the last erase?"""
        generation, erased = self._generations()
        return generation > erased

    def _generations(self) -> tuple[int, int]:
        rows = dict(
            self.db.read(
                lambda db: db.execute(
                    "SELECT key, value FROM meta WHERE key IN ('erase_generation', 'erased_generation')"
                ).fetchall()
            )
        )
        return int(rows.get("erase_generation", 0)), int(rows.get("erased_generation", 0))

    def erase(self) -> bool:
        """Rewrite what deletes left behind (see the module docstring) if a delete happened since the last
        erase; True if it ran. One replica at a time."""
        generation, erased = self._generations()
        if generation <= erased:
            return False
        started = time.monotonic()
        # One connection for the lock and the work: a sweep calls this while it holds one for its own lock,
        # and the pool may have only two.
        with self.db.session() as conn:
            row = conn.execute(f"SELECT pg_try_advisory_lock({lock_key('%s')})", ("erase",)).fetchone()
            if not (row and row[0]):
                return False  # another replica is erasing right now
            try:
                conn.execute(f"SET lock_timeout = '{ERASE_LOCK_TIMEOUT}'")
                conn.execute("SET statement_timeout = 0")  # a large table's rewrite may take longer than a call may
                conn.execute("VACUUM (FULL) memories")
                tables = [t for (t,) in conn.execute("SELECT table_name FROM vector_models")]
                for table in (*tables, "embedding_claims"):
                    conn.execute(sql.SQL("VACUUM {}").format(sql.Identifier(table)))
                conn.execute(
                    "UPDATE meta SET value = %s WHERE key = 'erased_generation' AND value::bigint < %s",
                    (str(generation), generation),
                )
            except psycopg.errors.LockNotAvailable:
                log.warning("erase postponed: the memories table stayed busy for %s", ERASE_LOCK_TIMEOUT)
                return False
            except psycopg.Error as exc:
                raise StoreError(f"erasing deleted memories in {self.location} failed: {first_line(exc)}") from None
            finally:
                if not conn.closed:
                    conn.execute("RESET lock_timeout")
                    conn.execute("RESET statement_timeout")
                    conn.execute(f"SELECT pg_advisory_unlock({lock_key('%s')})", ("erase",))
        log.info("erased what deletes left in %s (VACUUM FULL, %.2f s)", self.location, time.monotonic() - started)
        return True

    def maintenance(self) -> None:
        self.erase()

    def checkpoint(self) -> None:
        """Everything committed is durable already (the server's WAL); drop what deletes left behind."""
        self.erase()

    def give_up_waits(self, after_s: float) -> None:
        self.db.give_up_waits(after_s)

    def close(self) -> None:
        self.db.close()
