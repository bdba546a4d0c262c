"""SQLite's vector index: the stored embeddings of one model in an in-memory numpy matrix, exact cosine.

Several processes may share the file. Triggers append every vector write and every memory delete to the
`changes` log with an increasing sequence; before a search each process replays the log past its last-seen
sequence (one indexed query when nothing changed). If the log was pruned past that point it reloads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import numpy.typing as npt

from ...memory.model import MemoryFilter
from ...memory.ports import Vector
from ..matrix import VectorMatrix
from .connection import Connection, Database
from .repository import SqliteEmbeddings, SqliteMemories, filter_sql, from_blob

log = logging.getLogger(__name__)

CHANGE_LOG_KEEP = 100_000


class ChangeLog:
    def __init__(self, database: Database):
        self.db = database

    def last(self) -> int:
        return self.db.read(lambda db: db.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0])

    def since(self, seq: int, limit: int = 10_000) -> tuple[list[tuple[int, int, str]], bool]:
        """(seq, key, op) after seq, and whether the log still reaches back to seq (False: pruned past it)."""

        def q(db: Connection) -> tuple[list[tuple[int, int, str]], bool]:
            rows = db.execute(
                "SELECT seq, pk, op FROM changes WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
            ).fetchall()
            oldest = db.execute("SELECT min(seq) FROM changes").fetchone()[0]
            return rows, oldest is None or oldest <= seq + 1

        return self.db.read(q)

    def prune(self, keep_last: int = CHANGE_LOG_KEEP) -> int:
        """Drop old rows; a process that lagged past them reloads its index in full."""

        def txn(db: Connection) -> int:
            top = db.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]
            return db.execute("DELETE FROM changes WHERE seq <= ?", (top - keep_last,)).rowcount

        return self.db.write(txn)


class MatrixVectors:
    def __init__(
        self,
        database: Database,
        memories: SqliteMemories,
        embeddings: SqliteEmbeddings,
        changes: ChangeLog,
        model_id: str,
    ):
        self.db = database
        self.memories = memories
        self.embeddings = embeddings
        self.changes = changes
        self.model_id = model_id
        self.matrix: VectorMatrix | None = None
        self._loaded = False
        self._seen_seq = 0
        self._seen_version: int | None = None
        """The database's data_version when the change log was last read to its end."""
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._loaded

    @property
    def dim(self) -> int | None:
        return None if self.matrix is None else self.matrix.dim

    def __len__(self) -> int:
        return 0 if self.matrix is None else len(self.matrix)

    def load(self) -> int:
        with self._lock:
            seq = self.changes.last()
            matrix: VectorMatrix | None = None
            for batch in self.embeddings.iter_vectors(self.model_id):
                if matrix is None:
                    matrix = VectorMatrix(len(batch[0][2]) // 4)  # float32 blobs
                matrix.add_batch(batch)
            self.matrix = matrix
            self._seen_seq = seq
            self._loaded = True
            return len(self)

    def refresh(self) -> None:
        if not self._loaded:
            self.load()
            return
        with self._lock:
            # Nothing committed since the last look (one pragma, where a recall's three searches would
            # otherwise each read the change log twice). The version must be read before the log: a commit
            # landing after an empty read of the log then still moves it past the one recorded below.
            version = self.db.data_version()
            if version is not None and version == self._seen_version:
                return
            while True:
                changes, complete = self.changes.since(self._seen_seq)
                if not complete:
                    break
                if not changes:
                    self._seen_version = version
                    return
                embedded = [key for _, key, op in changes if op == "embed"]
                fresh = {key: (ns, blob) for key, ns, blob in self.embeddings.vectors_for(self.model_id, embedded)}
                for _, key, op in changes:
                    if op == "delete":
                        if self.matrix is not None:
                            self.matrix.remove(key)
                    elif key in fresh:  # an 'embed' by another model has no vector of ours: nothing to do
                        ns, blob = fresh[key]
                        vector = from_blob(blob)
                        if self.matrix is None:
                            self.matrix = VectorMatrix(len(vector))
                        self.matrix.upsert(key, ns, vector)
                self._seen_seq = changes[-1][0]
        log.info("change log pruned past seq %d; reloading the vector index", self._seen_seq)
        self.load()

    def search(self, namespace: str, query: Vector, k: int, where: MemoryFilter) -> list[tuple[int, float]]:
        self.refresh()
        if self.matrix is None:
            return []
        if where.narrows_recall:
            sql, params = filter_sql(where)
            allowed = set(
                self.db.read(
                    lambda db: [pk for (pk,) in db.execute(f"SELECT m.pk FROM memories m WHERE {sql}", params)]
                )
            )
            return self.matrix.search(namespace, query, k, allowed)
        # Over-fetch, then drop what the filter excludes (superseded, expired): both are rare.
        found = self.matrix.search(namespace, query, k * 2)
        live = self.memories.live_keys(namespace, [key for key, _ in found], where)
        return [(key, s) for key, s in found if key in live][:k]

    def one_read(self) -> AbstractContextManager[None]:
        """Nothing to spare: a refresh when nothing was committed is one pragma (data_version)."""
        return nullcontext()

    def scores_for(self, namespace: str, query: Vector, keys: Sequence[int]) -> dict[int, float]:
        if not keys:
            return {}
        self.refresh()
        if self.matrix is None:
            return {}
        return self.matrix.scores_for(namespace, query, list(keys))

    def vectors(self, namespace: str) -> tuple[npt.NDArray[np.int64], Vector]:
        self.refresh()
        if self.matrix is None:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
        return self.matrix.vectors(namespace)
