"""One SQLite connection: pragmas, transactions, busy retries, and errors a person can act on.

SQLite comes from the `sqlean.py` wheel (SQLite 3.50, with FTS5) rather than the interpreter's own build:
forgetting must erase, and FTS5's `secure-delete` option, which removes a deleted row's tokens from the
index instead of leaving them until a merge, needs SQLite 3.42+ (Python 3.11 here links 3.40.1).

Durability: WAL with `synchronous=FULL`. Every commit fsyncs the WAL before `remember` returns, so neither
a killed process nor a power cut loses an acknowledged write (measured cost: ~0.2 ms per commit on this
class of disk). `secure_delete=ON` zeroes deleted cells and freed pages, so a deleted memory's bytes do not
linger in the file; the WAL is truncated by the checkpoint at shutdown.

Privacy: memories are private data. A new database file is created 0600 before SQLite opens it (SQLite gives
its -wal, -shm and -journal the database's mode), and the default data folder 0700, whatever the umask; a
folder or database that already exists keeps its owner's mode.

Concurrency: several processes may share the file. Writes take the write lock up front (`BEGIN IMMEDIATE`)
so a busy database fails before anything is done, never half-way. SQLite's busy handler waits in short slices
(BUSY_SLICE_MS) and a retry loop around it waits up to LOCK_WAIT_S in all, checking between slices whether the
server is stopping (`give_up_waits`): a process that keeps the write lock (a long transaction, a person's
`BEGIN IMMEDIATE` in the sqlite3 shell) costs a call a clear StoreBusy, and a shutdown never waits for it.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import sqlite3  # sqlean mirrors the standard module's API and ships no type stubs
else:
    import sqlean as sqlite3

from ...memory.ports import StoreBusy, StoreError, StoreFullError
from ...output_files import create_private_file

log = logging.getLogger(__name__)

T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000
"""The busy timeout of connections that wait in SQLite alone (a backup's source)."""
BUSY_SLICE_MS = 100
"""The server's connections wait for a lock at most this long at a time, then look whether to go on waiting."""
LOCK_WAIT_S = 60.0
"""How long a call waits in all for a lock another process holds before it fails with StoreBusy."""

Connection = sqlite3.Connection
DatabaseError = sqlite3.DatabaseError


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    message = str(exc).lower()
    return "locked" in message or "busy" in message


def _is_full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == 13 or "full" in str(exc).lower()  # SQLITE_FULL


class Database:
    """Two connections to one file, each serialised by its own lock so the event loop and worker threads can
    share them: one for write transactions, one (query-only) for reads. In WAL mode a reader never waits for
    a writer, so a recall is not held up by a write of this process (a forget, an embedding batch, the
    access-stats flush) nor by one waiting for another process's write lock."""

    def __init__(self, path: Path | str, *, create_parent: bool = False, max_page_count: int | None = None):
        self.path = Path(path)
        if str(path) != ":memory:":
            self._check_location(create_parent)
        self._lock = threading.RLock()
        self._give_up_at: float | None = None
        """monotonic time from which waits for a lock end at once (the server is stopping); None: never."""
        self._locked_at_give_up: float | None = None
        """Set when a wait ended in that give-up: when it began. Later waits then end at once."""
        try:
            self._db = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=BUSY_SLICE_MS / 1000
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the memory database {self.path}: {exc}") from None
        try:
            self._configure(max_page_count)
            self._reader, self._read_lock = self._open_reader()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise self.unusable(exc) from None

    def _open_reader(self) -> tuple[Connection, threading.RLock]:
        if str(self.path) == ":memory:":
            return self._db, self._lock  # a second connection would be a second, empty database
        reader = sqlite3.connect(
            str(self.path), isolation_level=None, check_same_thread=False, timeout=BUSY_SLICE_MS / 1000
        )
        reader.execute(f"PRAGMA busy_timeout = {BUSY_SLICE_MS}")
        reader.execute("PRAGMA temp_store = MEMORY")
        reader.execute("PRAGMA query_only = ON")
        return reader, threading.RLock()

    def _check_location(self, create_parent: bool) -> None:
        parent = self.path.parent
        if not parent.exists():
            if not create_parent:
                raise StoreError(
                    f"the directory for the memory database does not exist: {parent} "
                    "(create it, or point AGENTCACHE_DB / --db somewhere else)"
                )
            try:
                parent.parent.mkdir(parents=True, exist_ok=True)
                try:
                    parent.mkdir(mode=0o700)  # memories are private: the owner only
                except FileExistsError:
                    pass  # made meanwhile by another process: not ours to change
                else:
                    parent.chmod(0o700)  # the umask may have taken bits away
            except OSError as exc:
                raise StoreError(f"cannot create the data directory {parent}: {exc.strerror}") from None
        if self.path.exists() and not os.access(self.path, os.R_OK | os.W_OK):
            raise StoreError(f"the memory database {self.path} is not readable and writable by this user")
        if not self.path.exists():
            if not os.access(parent, os.W_OK):
                raise StoreError(f"cannot create the memory database: directory {parent} is not writable")
            try:
                # a new database is created owner-only (SQLite gives its -wal and -shm its mode); an existing
                # one keeps the mode its owner gave it
                create_private_file(self.path)
            except OSError as exc:
                raise StoreError(f"cannot create the memory database {self.path}: {exc.strerror}") from None

    def unusable(self, exc: Exception) -> StoreError:
        return StoreError(
            f"cannot use the memory database {self.path}: {exc}. The file was left untouched; if it is "
            "damaged, move it aside (keep a copy) and restart, or restore it from a backup."
        )

    def _configure(self, max_page_count: int | None) -> None:
        db = self._db
        db.execute(f"PRAGMA busy_timeout = {BUSY_SLICE_MS}")
        mode = self.retry(lambda: db.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        if str(mode).lower() != "wal" and str(self.path) != ":memory:":
            raise StoreError(f"could not switch {self.path} to WAL mode (got {mode!r})")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA secure_delete = ON")
        db.execute("PRAGMA temp_store = MEMORY")
        if max_page_count is not None:
            db.execute(f"PRAGMA max_page_count = {int(max_page_count)}")

    # -- transactions

    def give_up_waits(self, after_s: float) -> None:
        """From `after_s` seconds on, a wait for a lock (SQLite's, or this object's own) ends at once with
        StoreBusy; waits under way end within a slice. Called from any thread when the server begins to stop."""
        give_up_at = time.monotonic() + after_s
        self._give_up_at = give_up_at if self._give_up_at is None else min(self._give_up_at, give_up_at)

    def _busy(self, waited_s: float, behind: str) -> StoreBusy:
        stopping = self._give_up_at is not None and time.monotonic() >= self._give_up_at
        return StoreBusy(
            f"the memory database {self.path} is busy: {behind} for {waited_s:.1f} s; nothing was written"
            + ("; the server is shutting down" if stopping else "; try again later")
        )

    def _should_stop_waiting(self, started: float) -> bool:
        now = time.monotonic()
        return now - started >= LOCK_WAIT_S or (self._give_up_at is not None and now >= self._give_up_at)

    def _gave_up(self) -> StoreBusy | None:
        """Once a wait ended in the shutdown's give-up, the others need not wait a slice each to learn it."""
        if self._locked_at_give_up is None:
            return None
        return self._busy(time.monotonic() - self._locked_at_give_up, "another process has held its lock")

    def retry(self, fn: Callable[[], T]) -> T:
        """Run fn, again while another process holds a lock it needs (each try waits BUSY_SLICE_MS in SQLite's
        busy handler): up to LOCK_WAIT_S in all, or until the server gives up waiting; then StoreBusy."""
        started = time.monotonic()
        delay = 0.005
        while True:
            if (gave_up := self._gave_up()) is not None:
                raise gave_up
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                if self._should_stop_waiting(started):
                    if self._give_up_at is not None and time.monotonic() >= self._give_up_at:
                        self._locked_at_give_up = started
                    raise self._busy(time.monotonic() - started, "another process has held its lock") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)

    @contextmanager
    def _holding(self, lock: threading.RLock) -> Iterator[None]:
        """Take one of this object's locks (its holder may be waiting for SQLite's); StoreBusy on giving up."""
        started = time.monotonic()
        while not lock.acquire(timeout=0.02):
            if (gave_up := self._gave_up()) is not None:
                raise gave_up
            if self._should_stop_waiting(started):
                raise self._busy(time.monotonic() - started, "this call waited behind this server's other calls on it")
        try:
            yield
        finally:
            lock.release()

    @contextmanager
    def atomic(self) -> Iterator[Connection]:
        """A write transaction (BEGIN IMMEDIATE), or a savepoint when nested."""
        with self._holding(self._lock):
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

    def write(self, fn: Callable[[Connection], T]) -> T:
        """Run fn in one write transaction, retried as a whole if the database is busy."""

        def attempt() -> T:
            with self.atomic() as db:
                return fn(db)

        try:
            return self.retry(attempt)
        except sqlite3.Error as exc:
            if _is_full(exc):
                raise StoreFullError(
                    f"the memory database {self.path} is full (disk or page limit); nothing was written"
                ) from None
            raise

    def read(self, fn: Callable[[Connection], T]) -> T:
        """Run fn on the read connection: it sees what is committed, and never waits for a writer."""

        def attempt() -> T:
            with self._holding(self._read_lock):
                return fn(self._reader)

        return self.retry(attempt)

    def data_version(self) -> int | None:
        """The read connection's PRAGMA data_version: it changes whenever another connection (another
        process's, or this process's writer) commits. None where reads share the writer's connection
        (":memory:"), whose own commits leave it unchanged."""
        if self._reader is self._db:
            return None
        return self.read(lambda db: int(db.execute("PRAGMA data_version").fetchone()[0]))

    def read_snapshot(self, fn: Callable[[Connection], T]) -> T:
        """Like read, inside one read transaction: every statement of fn sees the same committed state (the
        read connection is in autocommit mode, where each statement takes its own snapshot)."""

        def attempt() -> T:
            with self._holding(self._read_lock):
                self._reader.execute("BEGIN")
                try:
                    return fn(self._reader)
                finally:
                    self._reader.execute("COMMIT")

        return self.retry(attempt)

    def execute_outside_transaction(self, sql: str) -> None:
        """For statements SQLite refuses inside a transaction (VACUUM)."""
        with self._lock, self._read_lock:
            self.retry(lambda: self._db.execute(sql))

    # -- maintenance

    def checkpoint(self, wait_ms: int = 500) -> tuple[int, int, int]:
        """Copy the WAL into the database and truncate it to zero bytes.

        Waits at most wait_ms for another process's reader (a backup, a long export) to let go: a shutdown
        must not overrun the host's 2 s. If one still holds on, everything stays committed in the WAL and
        the next checkpoint (any process's) moves it; the first value returned is then 1 (busy).
        """
        with self._holding(self._lock), self._holding(self._read_lock):  # no read of ours may be open across it
            self._db.execute(f"PRAGMA busy_timeout = {int(wait_ms)}")
            try:
                return tuple(self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone())
            finally:
                self._db.execute(f"PRAGMA busy_timeout = {BUSY_SLICE_MS}")

    def integrity_check(self) -> str:
        return self.read(lambda db: db.execute("PRAGMA integrity_check").fetchone()[0])

    def close(self) -> None:
        with self._lock, self._read_lock:
            if self._reader is not self._db:
                self._reader.close()
            self._db.close()


def chunks(items: list[T], size: int = 500) -> Iterator[list[T]]:
    """Slices of at most `size`, for `IN (...)` lists under SQLite's variable limit."""
    for i in range(0, len(items), size):
        yield items[i : i + size]
