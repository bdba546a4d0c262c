"""PostgreSQL vectors searched in the replica's memory: the model's vector table as the float16 matrix SQLite
keeps (backends/matrix.py), exact cosine, kept current through the `vector_changes` log.

Why: at 100k memories pgvector's HNSW search alone took 15-18 ms at the candidate list that finds 0.98 of the
exact top 10, more than the database's whole share of a recall may take; the exact float16 scan in memory takes
~6 ms at 100k and misses nothing (bench/RESULTS.md, issue 20). The cost is memory in every replica (the matrix is
77 MB per 100k vectors of 384 dimensions; the process's RSS grew 245 MiB) and a load at start; a table larger than `max_rows` stays with the HNSW index
(PgVectors), which also answers every search while the load runs, and every search a filter narrows (tags,
dates: the database filters, the index finds).

Keeping current, with several replicas writing: statement triggers on the vector table log the key of every
vector inserted, updated or deleted, with the writing transaction's id (schema migration 5). Before a search a
replica reads, in one statement (one snapshot), the log rows of the transactions its previous snapshot did not
see, the current state of those keys' vectors, and its new snapshot: sequence order is not commit order (a
transaction may commit after a later-numbered one was read), but a committed transaction is either visible to
a snapshot or not, so nothing is skipped and nothing is read twice. One round trip when nothing changed. The
log is pruned (maintenance); a replica whose last snapshot is older than what was pruned loads again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import numpy.typing as npt
from psycopg import sql

from ...memory.model import MemoryFilter
from ...memory.ports import Vector
from ..matrix import VectorMatrix
from .connection import TRANSACTION_TIMEOUTS, Connection, Database
from .repository import PgEmbeddings, PgMemories, as_array
from .vectors import PgVectors

log = logging.getLogger(__name__)

MATRIX_MAX_ROWS = 500_000
"""A vector table with more rows than this is searched by its HNSW index (AGENTCACHE_PG_VECTOR_SEARCH=auto):
the exact scan grows with the rows (~6 ms per 100k on this machine's CPU, so ~30 ms at 500k, against the HNSW
search's ~49 ms at 1M) and so does every replica's memory (RSS grew 245 MiB for 100k vectors: ~1.2 GiB at 500k)."""
CHANGE_LOG_KEEP = 100_000
"""Log rows kept by a prune (the newest): a replica that fell further behind loads again."""
LOAD_BATCH = 20_000
"""Vectors fetched per round trip by a load."""
CATCH_UP_MAX = 20_000
"""More changed vectors than this since the last read (a bulk import meanwhile): load again, in batches, rather
than fetch them all in one statement."""


class PgMatrixVectors:
    def __init__(
        self,
        database: Database,
        memories: PgMemories,
        embeddings: PgEmbeddings,
        index: PgVectors,
        *,
        max_rows: int | None = MATRIX_MAX_ROWS,
    ):
        self.db = database
        self.memories = memories
        self.embeddings = embeddings
        self.index = index
        """Answers while the vectors load, for a table too large for memory, and for narrowed searches."""
        self.max_rows = max_rows
        """None: always in memory (AGENTCACHE_PG_VECTOR_SEARCH=memory)."""
        self.matrix: VectorMatrix | None = None
        self._in_memory = False
        """The matrix is loaded and kept current: searches use it."""
        self._decided = False
        """A load ran (and put the vectors in memory, or found the table too large for it)."""
        self._snapshot: str | None = None
        """The snapshot the log was last read in (pg_snapshot as text)."""
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._loads = 0
        """Loads that ended: a thread that found it must load again skips its load if one ended meanwhile."""
        self._logged_tables: set[str] = set()
        """Tables found with the log's triggers (_logged)."""
        self._one_read = threading.local()
        """Per thread, inside one_read: .read, whether the block's one catch-up happened."""

    @property
    def model_id(self) -> str:
        return self.index.model_id

    @property
    def loaded(self) -> bool:
        return True  # the HNSW index answers until the matrix is loaded

    @property
    def in_memory(self) -> bool:
        return self._in_memory

    def __len__(self) -> int:
        in_memory, matrix = self._state()
        if in_memory and matrix is not None:
            return len(matrix)
        return len(self.index)

    def _table(self, db: Connection) -> str | None:
        return self.embeddings.table(db, self.model_id)

    def _logged(self, db: Connection, table: str) -> bool:
        """Does the table have the change log's three triggers? (Checked once per table: every start adds them
        where missing, but a replica of an earlier version may create a new model's table without them while
        this one runs.)"""
        if table in self._logged_tables:
            return True
        row = db.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(quote_ident(%s)) "
            "AND tgfoid = 'agentcache_vectors_changed'::regproc",
            (table,),
        ).fetchone()
        if row is not None and int(row[0]) >= 3:
            self._logged_tables.add(table)
            return True
        return False

    def _use_the_index(self, table: str) -> None:
        """The table's changes are not logged: search the index (always current) until a restart adds the log."""
        log.warning(
            "the vector table %s has no change log (created by an earlier version of agentcache-mcp): searching "
            "its HNSW index; restart this replica once every replica runs this version to search it in memory",
            table,
        )
        self._in_memory, self.matrix, self._snapshot, self._decided = False, None, None, True

    def load(self) -> int:
        """Load the model's vectors into memory (unless the table holds more than max_rows); returns how many
        vectors the search sees."""
        with self._load_lock:
            return self._load()

    def _load(self) -> int:
        started = time.monotonic()
        with self.db.connection() as conn, conn.transaction():
            if self.db.pooled:  # behind a transaction-mode pooler the session's timeouts are not ours
                conn.execute(TRANSACTION_TIMEOUTS)
            # Taken before the rows are read, so the next refresh reads again what committed meanwhile
            # (reading a key's state twice is harmless); and before the table is looked up, so a table another
            # replica creates (and writes its first vectors to) after the lookup is caught up with.
            row = conn.execute("SELECT pg_current_snapshot()::text").fetchone()
            assert row is not None
            snapshot = str(row[0])
            table = self._table(conn)
            if table is None:
                rows = 0
            else:
                counted = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
                rows = int(counted[0]) if counted else 0
            if table is not None and not self._logged(conn, table):
                with self._lock:
                    self._use_the_index(table)
                    self._loads += 1
                return rows
            if self.max_rows is not None and rows > self.max_rows:
                with self._lock:
                    self._in_memory, self.matrix, self._snapshot, self._decided = False, None, None, True
                    self._loads += 1
                log.info(
                    "%d vectors: more than AGENTCACHE_PG_VECTOR_SEARCH=auto keeps in memory (%d); searching the "
                    "HNSW index",
                    rows,
                    self.max_rows,
                )
                return rows
            matrix: VectorMatrix | None = None
            if table is not None:
                cursor = conn.cursor(name="agentcache_vectors_load", binary=True)
                cursor.itersize = LOAD_BATCH
                cursor.execute(sql.SQL("SELECT memory_pk, namespace, vector FROM {}").format(sql.Identifier(table)))
                while batch := cursor.fetchmany(LOAD_BATCH):
                    blobs = [(int(pk), str(ns), as_array(v).astype("<f4").tobytes()) for pk, ns, v in batch]
                    if matrix is None:
                        matrix = VectorMatrix(len(blobs[0][2]) // 4)
                    matrix.add_batch(blobs)
                cursor.close()
        with self._lock:
            self.matrix, self._snapshot, self._in_memory, self._decided = matrix, snapshot, True, True
            self._loads += 1
        log.debug("loaded %d vectors into memory (%.2f s)", len(self), time.monotonic() - started)
        return len(self)

    def _load_unless_loading(self) -> bool:
        """The first search of a process whose start did not load the vectors (a CLI command, a test) loads
        them; while another thread loads (the server's index sync at start), searches go to the index. False:
        that other thread's load had not ended (what it publishes may be older than this call)."""
        if self._decided:
            return True
        if not self._load_lock.acquire(blocking=False):
            return False
        try:
            if not self._decided:
                self._load()
        finally:
            self._load_lock.release()
        return True

    @contextmanager
    def one_read(self) -> Iterator[None]:
        """One catch-up with the log for this thread's reads in the block (a recall's search and its three
        scorings read it four times otherwise: a round trip each, ~0.5 ms at 100k). The reads see the vectors
        as of the block's catch-up or later (another thread's catch-up updates the same matrix). A memory
        forgotten by another replica after the block's catch-up can still be scored in the block; its row is
        gone, so the recall's hydration drops it. Nested blocks are one."""
        state = self._one_read
        if getattr(state, "inside", False):
            yield
            return
        state.inside, state.read = True, False
        try:
            yield
        finally:
            state.inside = state.read = False

    def refresh(self) -> None:
        """Catch up with the log (one round trip when nothing changed); the first call loads. Inside one_read,
        only the block's first call does."""
        state = self._one_read
        inside = getattr(state, "inside", False)
        if inside and state.read:
            return
        # Not while another thread's first load runs: the block's reads go to the index until it ends, then
        # its next read catches up with what committed since the load's snapshot (older than the block).
        if self._refresh() and inside:
            state.read = True

    def _refresh(self) -> bool:
        """False if another thread's first load was still running (nothing was caught up with)."""
        decided = self._load_unless_loading()
        while self._in_memory:
            with self._lock:
                if self._snapshot is None:
                    return True
                loads = self._loads
                if not self._catch_up():
                    return True
            with self._load_lock:
                if self._loads == loads:
                    log.info(
                        "the vector change log was pruned past this replica's last read, more than %d vectors "
                        "changed since, or the model's vector table appeared: loading the vectors again",
                        CATCH_UP_MAX,
                    )
                    self._load()
                    return True
            # Another thread loaded while this one waited (it found the same): catch up from its snapshot
            # rather than load the whole table once more.
        return decided

    def _catch_up(self) -> bool:
        """Apply what the log says changed since self._snapshot; True: the log no longer reaches back that far,
        too much changed (CATCH_UP_MAX), or the model's table appeared: load again."""
        assert self._snapshot is not None
        previous = self._snapshot

        def q(db: Connection) -> list[tuple[Any, ...]]:
            table = self._table(db)
            if table is None:
                # The snapshot, then the table looked up again: a table created (and written) after that lookup
                # committed after the snapshot too, so the next catch-up reads its rows.
                row = db.execute("SELECT pg_current_snapshot()::text").fetchone()
                assert row is not None
                table = self._table(db)
                if table is None:
                    return [(row[0], False, None, None, None)]
            met = table in self._logged_tables
            if not self._logged(db, table):
                return [(None, table, None, None, None)]
            if not met:
                # A table this replica meets for the first time (created after its load): a replica of an
                # earlier version may have created it and written vectors before a start added the triggers,
                # and the log lacks those. Load it whole (it is new: few rows, or an import's many anyway).
                return [(None, None, None, None, None)]
            return db.execute(
                sql.SQL(
                    "WITH changed AS (SELECT DISTINCT c.memory_pk FROM vector_changes c "
                    "WHERE c.xid >= pg_snapshot_xmin(%(previous)s::pg_snapshot) AND c.table_name = %(table)s "
                    "AND NOT pg_visible_in_snapshot(c.xid, %(previous)s::pg_snapshot) LIMIT %(most)s) "
                    "SELECT pg_current_snapshot()::text, "
                    "(SELECT value::xid8 FROM meta WHERE key = 'vector_changes_pruned_below') "
                    "> pg_snapshot_xmin(%(previous)s::pg_snapshot), c.memory_pk, v.namespace, v.vector "
                    "FROM (SELECT 1) one LEFT JOIN (changed c LEFT JOIN {} v ON v.memory_pk = c.memory_pk) ON true"
                ).format(sql.Identifier(table)),
                {"previous": previous, "table": table, "most": CATCH_UP_MAX + 1},
                binary=True,
            ).fetchall()

        rows = self.db.query(q)
        if rows[0][0] is None:
            if rows[0][1] is None:  # a table met for the first time: load again
                return True
            self._use_the_index(str(rows[0][1]))  # the table appeared without the log's triggers
            return False
        snapshot, pruned = str(rows[0][0]), bool(rows[0][1])
        if pruned or len(rows) > CATCH_UP_MAX:
            return True
        for _, _, pk, namespace, vector in rows:
            if pk is None:
                continue
            if vector is None:  # deleted since
                if self.matrix is not None:
                    self.matrix.remove(int(pk))
                continue
            values = as_array(vector)
            if self.matrix is None:
                self.matrix = VectorMatrix(len(values))
            self.matrix.upsert(int(pk), str(namespace), values)
        self._snapshot = snapshot
        if self.max_rows is not None and self.matrix is not None and len(self.matrix) > self.max_rows:
            log.info(
                "%d vectors: more than AGENTCACHE_PG_VECTOR_SEARCH=auto keeps in memory (%d); searching the HNSW "
                "index from now on",
                len(self.matrix),
                self.max_rows,
            )
            self.matrix, self._in_memory, self._snapshot = None, False, None
        return False

    def _state(self) -> tuple[bool, VectorMatrix | None]:
        """(in memory, the matrix), read together: a load or a switch to the index sets both at once (under the
        lock), and a search that read one before and the other after would search no matrix at all."""
        with self._lock:
            return self._in_memory, self.matrix

    def search(self, namespace: str, query: Vector, k: int, where: MemoryFilter) -> list[tuple[int, float]]:
        if where.narrows_recall:
            return self.index.search(namespace, query, k, where)
        self.refresh()
        in_memory, matrix = self._state()
        if not in_memory:
            return self.index.search(namespace, query, k, where)
        if matrix is None:
            return []
        # Over-fetch, then drop what the filter excludes (superseded, expired): both are rare. If they were
        # not this time, the index answers with the filter in SQL.
        found = matrix.search(namespace, query, 2 * k)
        live = self.memories.live_keys(namespace, [key for key, _ in found], where)
        hits = [(key, score) for key, score in found if key in live]
        if len(hits) < k and len(found) == 2 * k:
            return self.index.search(namespace, query, k, where)
        return hits[:k]

    def exact_search(self, namespace: str, query: Vector, k: int, where: MemoryFilter) -> list[tuple[int, float]]:
        """The exact top-k computed by the database (for measuring against)."""
        return self.index.exact_search(namespace, query, k, where)

    def scores_for(self, namespace: str, query: Vector, keys: Sequence[int]) -> dict[int, float]:
        if not keys:
            return {}
        self.refresh()
        in_memory, matrix = self._state()
        if not in_memory:
            return self.index.scores_for(namespace, query, keys)
        return {} if matrix is None else matrix.scores_for(namespace, query, list(keys))

    def vectors(self, namespace: str) -> tuple[npt.NDArray[np.int64], Vector]:
        self.refresh()
        in_memory, matrix = self._state()
        if not in_memory:
            return self.index.vectors(namespace)
        if matrix is None:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
        return matrix.vectors(namespace)

    def prune(self, keep: int | None = None) -> int:
        """prune_vector_changes (the log is the database's: any replica prunes it)."""
        return prune_vector_changes(self.db, keep)


def prune_vector_changes(database: Database, keep: int | None = None) -> int:
    """Delete all but about the newest `keep` (CHANGE_LOG_KEEP) vector_changes rows, never a row of a
    transaction some snapshot may still not see (at or above the oldest running transaction); record the bound
    for readers. Run by the store's maintenance whatever AGENTCACHE_PG_VECTOR_SEARCH says: the triggers log
    every vector write, also where every replica searches the index."""
    keep = CHANGE_LOG_KEEP if keep is None else keep

    def txn(db: Connection) -> int:
        row = db.execute(
            "SELECT (SELECT xid FROM vector_changes ORDER BY seq DESC OFFSET %s LIMIT 1)::text, "
            "pg_snapshot_xmin(pg_current_snapshot())::text",
            (keep,),
        ).fetchone()
        if row is None or row[0] is None:  # no more than `keep` rows
            return 0
        bound = str(min(int(row[0]), int(row[1])))
        db.execute("SELECT 1 FROM meta WHERE key = 'vector_changes_pruned_below' FOR UPDATE")
        deleted = db.execute("DELETE FROM vector_changes WHERE xid < %s::xid8", (bound,)).rowcount
        db.execute(
            "UPDATE meta SET value = %s WHERE key = 'vector_changes_pruned_below' AND value::xid8 < %s::xid8",
            (bound, bound),
        )
        return deleted

    return database.write(txn)

