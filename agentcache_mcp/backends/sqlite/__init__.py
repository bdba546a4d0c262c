"""The SQLite backend: one file (WAL) holds the memories, the FTS5 keyword index, the vectors and the change
log. The embedded default for one person's hosts; several processes may share the file."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ...memory.ports import EraseReport, StoreError
from ..auth_state import Conflict, SqlAuthState
from .connection import Database, DatabaseError, sqlite3
from .keywords import Fts5Keywords
from .repository import SqliteEmbeddings, SqliteMemories
from .schema import migrate, refuse_newer_schema
from .vectors import ChangeLog, MatrixVectors

__all__ = ["SqliteAuthState", "SqliteBackend"]


class SqliteAuthState(SqlAuthState):
    """The OAuth tables of the file (schema migration 3). No row lock is needed: every write transaction
    (BEGIN IMMEDIATE) holds the file's one write lock, across processes."""

    def conflict(self, exc: Exception) -> Conflict:
        # Foreign keys are not enforced (the revoke deletes a grant's rows itself), so only a key can clash.
        unique = isinstance(exc, sqlite3.IntegrityError) and "UNIQUE constraint failed" in str(exc)
        return "unique" if unique else None


class SqliteBackend:
    batch_pause_s = 0.12
    """Between an import's batches the write lock is let go this long: more than the longest sleep of SQLite's
    busy handler (100 ms), so a write that is waiting gets the lock before the next batch takes it (measured:
    the longest concurrent remember during a 10k import 0.30-0.41 s with the pause, 6-11 s as one transaction)."""

    def __init__(self, path: Path, model_id: str, *, create_parent: bool = False, max_page_count: int | None = None):
        self.path = path
        refuse_newer_schema(path)
        self.db = Database(path, create_parent=create_parent, max_page_count=max_page_count)
        try:
            self.schema_version = migrate(self.db)
        except StoreError:
            self.db.close()
            raise
        except DatabaseError as exc:
            self.db.close()
            raise self.db.unusable(exc) from None
        self.memories = SqliteMemories(self.db)
        self.embeddings = SqliteEmbeddings(self.db)
        self.keywords = Fts5Keywords(self.db, self.memories)
        self.changes = ChangeLog(self.db)
        self.vectors = MatrixVectors(self.db, self.memories, self.embeddings, self.changes, model_id)
        self.auth_state = SqliteAuthState(self.db)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "sqlite",
            "db_path": str(self.path),
            "schema_version": self.schema_version,
            "keyword_index": "fts5 (in the database, always current)",
            "erasure": "at each forget (secure_delete zeroes the deleted bytes); the -wal file keeps them until "
            "the next checkpoint (at shutdown)",
        }

    @contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """Always granted: SQLite's writes already take the file's one write lock, and a second process's sweep
        finds nothing left to do, so nothing is gained by making it wait or skip."""
        yield True

    @contextmanager
    def bulk_load(self, expected_rows: int) -> Iterator[None]:
        """Nothing to defer: the vector index is built in memory at load, and FTS5 inserts are cheap."""
        yield

    def maintenance(self) -> None:
        self.changes.prune()
        self.auth_state.housekeeping()

    def checkpoint(self) -> None:
        self.db.checkpoint()

    def erase(self) -> EraseReport:
        """Nothing to rewrite: a forget zeroes the deleted bytes in the file at once (`secure_delete`, FTS5
        `secure-delete`); the checkpoint moves the -wal file's pages into the database and empties it."""
        busy, _, _ = self.db.checkpoint()
        if busy:
            return EraseReport(
                False,
                "SQLite needs no rewrite: a forget zeroes the deleted bytes at once; but the -wal file could not be "
                "emptied now (another process is reading): the next checkpoint does it (a server's, at shutdown)",
            )
        return EraseReport(
            True,
            "SQLite needs no rewrite: a forget zeroes the deleted bytes at once (secure_delete); the -wal file, "
            "which still held them, was checkpointed and emptied",
        )

    def scheduled_erase(self, now: float) -> float | None:
        return None

    def give_up_waits(self, after_s: float) -> None:
        self.db.give_up_waits(after_s)

    def close(self) -> None:
        self.db.close()
