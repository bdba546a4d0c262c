"""The memories table and the embeddings table: SQLite's MemoryRepository and EmbeddingStore."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ...memory.model import Memory, MemoryFilter
from ...memory.ports import Vector
from ..sql import COLUMNS, Dialect, SqlMemories
from ..sql import filter_sql as dialect_filter_sql
from .connection import Connection, Database, chunks
from .schema import purge_deleted_terms


class SqliteDialect(Dialect):
    """Lists travel as one JSON parameter (json_each): no limit on their length, one statement text."""

    mark = "?"
    greatest = "max"
    for_update = ""  # BEGIN IMMEDIATE: one writer at a time already

    def in_list(self, column: str) -> str:
        return f"{column} IN (SELECT value FROM json_each(?))"

    def values(self, items: Sequence[Any]) -> str:
        return json.dumps(list(items))

    def has_tags(self, column: str, tags: Sequence[str]) -> tuple[list[str], list[Any]]:
        return [f"EXISTS (SELECT 1 FROM json_each({column}) WHERE json_each.value = ?)"] * len(tags), list(tags)

    def in_pairs(self, columns: str, pairs: Sequence[tuple[str, str]]) -> tuple[str, list[Any]]:
        rows = "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?)"
        return f"{columns} IN ({rows})", [json.dumps([list(pair) for pair in pairs])]

    def day(self, column: str) -> str:
        return f"date({column}, 'unixepoch')"

    def tags_of(self, stored: Any) -> list[str]:
        return list(json.loads(stored))


SQLITE = SqliteDialect()
_memory = SQLITE.memory


def filter_sql(where: MemoryFilter, alias: str = "m") -> tuple[str, list[Any]]:
    """The MemoryFilter as a WHERE clause of SQLite's (the keyword and vector retrievers use it too)."""
    return dialect_filter_sql(where, SQLITE, alias)


def _rows_of_keys(
    db: Connection, columns: str, namespace: str, keys: Sequence[int], clause: str = "1", params: Sequence[Any] = ()
) -> Iterator[tuple[Any, ...]]:
    """`columns` of the memories with these keys in namespace (and matching `clause`), in chunks of the IN list
    SQLite allows."""
    for chunk in chunks(list(keys)):
        marks = ",".join("?" * len(chunk))
        yield from db.execute(
            f"SELECT {columns} FROM memories m WHERE m.pk IN ({marks}) AND m.namespace = ? AND {clause}",
            [*chunk, namespace, *params],
        )


class SqliteMemories(SqlMemories[Connection]):
    dialect = SQLITE

    def _lock_namespaces(self, db: Connection, namespaces: Iterable[str]) -> None:
        """Nothing to take: a write transaction (BEGIN IMMEDIATE) excludes every other writer of the file."""

    def _insert_vector(self, db: Connection, key: int, memory: Memory, model_id: str, vector: Vector) -> None:
        db.execute(
            "INSERT INTO embeddings (memory_pk, model, content_hash, vector) VALUES (?, ?, ?, ?)",
            (key, model_id, memory.content_hash, to_blob(vector)),
        )

    def get_by_keys(self, namespace: str, keys: Sequence[int]) -> dict[int, Memory]:
        def q(db: Connection) -> dict[int, Memory]:
            return {r[0]: _memory(r) for r in _rows_of_keys(db, COLUMNS, namespace, keys)}

        return self.db.read(q) if keys else {}

    def texts(self, namespace: str, keys: Sequence[int], prefix: int | None = None) -> dict[int, str]:
        column = "m.text" if prefix is None else f"substr(m.text, 1, {int(prefix)})"
        return self.db.read(lambda db: dict(_rows_of_keys(db, f"m.pk, {column}", namespace, keys))) if keys else {}

    def delete(self, where: MemoryFilter, limit: int | None = None) -> list[str]:
        sql, params = filter_sql(where)
        if limit is not None:
            sql = f"m.pk IN (SELECT m.pk FROM memories m WHERE {sql} ORDER BY m.pk LIMIT ?)"
            params = [*params, limit]

        def txn(db: Connection) -> list[str]:
            rows = db.execute(f"DELETE FROM memories AS m WHERE {sql} RETURNING pk, id", params).fetchall()
            if rows:
                purge_deleted_terms(db)
            return [memory_id for _, memory_id in sorted(rows)]

        return self.db.write(txn)

    def live_keys(self, namespace: str, keys: Sequence[int], where: MemoryFilter) -> set[int]:
        if not keys:
            return set()
        if not where.narrows_recall and not self._may_hide(namespace):
            return set(keys)  # nothing in the namespace is superseded or has an expiry: all are live
        sql, params = filter_sql(where)
        return self.db.read(lambda db: {pk for (pk,) in _rows_of_keys(db, "m.pk", namespace, keys, sql, params)})

    def _may_hide(self, namespace: str) -> bool:
        return self.db.read(
            lambda db: (
                db.execute(
                    "SELECT 1 FROM memories WHERE namespace = ? AND (superseded_by IS NOT NULL OR expires_at IS NOT NULL) "
                    "LIMIT 1",
                    (namespace,),
                ).fetchone()
                is not None
            )
        )

    def neighbours(
        self, namespace: str, keys: Sequence[int], width: int
    ) -> dict[int, list[tuple[int | None, int | None]]]:
        if width < 1 or not keys:
            return {int(k): [] for k in keys}
        # One statement for all keys: two correlated lookups per key, each reading `width` entries of the
        # namespace index from the key outward.
        side = (
            "(SELECT group_concat(pk) FROM (SELECT pk FROM memories WHERE namespace = ?1 AND pk {op} j.value "
            "ORDER BY pk {order} LIMIT ?3))"
        )
        sql = (
            f"SELECT j.value, {side.format(op='<', order='DESC')}, {side.format(op='>', order='ASC')} "
            "FROM json_each(?2) AS j"
        )

        def q(db: Connection) -> dict[int, list[tuple[int | None, int | None]]]:
            out: dict[int, list[tuple[int | None, int | None]]] = {}
            for key, before, after in db.execute(sql, (namespace, json.dumps([int(k) for k in keys]), width)):
                # Sorted here: group_concat's order is not guaranteed by SQLite.
                b = sorted((int(x) for x in before.split(",")), reverse=True) if before else []
                a = sorted(int(x) for x in after.split(",")) if after else []
                pad: list[None] = [None] * width
                out[key] = list(zip([*b, *pad][:width], [*a, *pad][:width], strict=True))
            return out

        return self.db.read(q)

    def record_access(self, accesses: Mapping[int, tuple[int, float]]) -> None:
        if not accesses:
            return

        def txn(db: Connection) -> None:
            db.executemany(
                "UPDATE memories SET access_count = access_count + ?, "
                "last_accessed_at = max(coalesce(last_accessed_at, 0), ?) WHERE pk = ?",
                [(count, last, key) for key, (count, last) in accesses.items()],
            )

        self.db.write(txn)


_NOT_EMBEDDED = "NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.memory_pk = m.pk AND e.model = ?)"


class SqliteEmbeddings:
    def __init__(self, database: Database):
        self.db = database

    def pending(self, model_id: str, limit: int, after_key: int = 0) -> list[tuple[int, str, str]]:
        return self.db.read(
            lambda db: db.execute(
                f"SELECT m.pk, m.text, m.content_hash FROM memories m WHERE m.pk > ? AND {_NOT_EMBEDDED} "
                "ORDER BY m.pk LIMIT ?",
                (after_key, model_id, limit),
            ).fetchall()
        )

    def claim(self, model_id: str, limit: int, after_key: int = 0, lease_s: float = 60.0) -> list[tuple[int, str, str]]:
        """The pending rows: processes sharing a file each embed what they find, and `write` is idempotent, so
        there is no claim to record (two processes rarely embed one row twice; nothing is lost if they do)."""
        return self.pending(model_id, limit, after_key)

    def count_pending(self, model_id: str) -> int:
        return self.db.read(
            lambda db: db.execute(f"SELECT count(*) FROM memories m WHERE {_NOT_EMBEDDED}", (model_id,)).fetchone()[0]
        )

    def first_pending_key(self, model_id: str) -> int | None:
        return self.db.read(
            lambda db: db.execute(f"SELECT min(m.pk) FROM memories m WHERE {_NOT_EMBEDDED}", (model_id,)).fetchone()[0]
        )

    def max_key(self) -> int:
        return self.db.read(lambda db: db.execute("SELECT coalesce(max(pk), 0) FROM memories").fetchone()[0])

    def write(self, model_id: str, items: Sequence[tuple[int, str, Vector]]) -> int:
        def txn(db: Connection) -> int:
            written = 0
            for key, digest, vector in items:
                written += db.execute(
                    "INSERT INTO embeddings (memory_pk, model, content_hash, vector) "
                    "SELECT pk, ?, content_hash, ? FROM memories WHERE pk = ? AND content_hash = ? "
                    "ON CONFLICT (memory_pk, model) DO UPDATE SET content_hash = excluded.content_hash, "
                    "vector = excluded.vector",
                    (model_id, to_blob(vector), key, digest),
                ).rowcount
            return written

        return self.db.write(txn) if items else 0

    def vectors_of(self, model_id: str, keys: Sequence[int]) -> dict[int, Vector]:
        return {key: from_blob(blob) for key, _, blob in self.vectors_for(model_id, keys)}

    def iter_vectors(self, model_id: str, batch: int = 5000) -> Iterator[list[tuple[int, str, bytes]]]:
        """(key, namespace, float32 blob) of every memory embedded by model_id, in batches."""
        last = 0

        def page(db: Connection) -> list[tuple[int, str, bytes]]:
            return db.execute(
                "SELECT e.memory_pk, m.namespace, e.vector FROM embeddings e JOIN memories m ON m.pk = e.memory_pk "
                "WHERE e.model = ? AND e.memory_pk > ? ORDER BY e.memory_pk LIMIT ?",
                (model_id, last, batch),
            ).fetchall()

        while True:
            rows = self.db.read(page)
            if not rows:
                return
            yield rows
            last = rows[-1][0]

    def vectors_for(self, model_id: str, keys: Sequence[int]) -> list[tuple[int, str, bytes]]:
        def q(db: Connection) -> list[tuple[int, str, bytes]]:
            out: list[tuple[int, str, bytes]] = []
            for chunk in chunks(list(keys)):
                marks = ",".join("?" * len(chunk))
                out.extend(
                    db.execute(
                        "SELECT e.memory_pk, m.namespace, e.vector FROM embeddings e JOIN memories m "
                        f"ON m.pk = e.memory_pk WHERE e.memory_pk IN ({marks}) AND e.model = ?",
                        [*chunk, model_id],
                    ).fetchall()
                )
            return out

        return self.db.read(q) if keys else []


def to_blob(vector: Vector) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def from_blob(blob: bytes) -> Vector:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)
