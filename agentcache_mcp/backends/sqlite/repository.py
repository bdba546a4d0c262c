"""The memories table and the embeddings table: SQLite's MemoryRepository and EmbeddingStore."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ...memory.model import Memory, MemoryFilter, NewMemory
from ...memory.ports import Change, Merge, UnknownMemories, Vector
from .connection import Connection, Database, chunks
from .schema import purge_deleted_terms

_COLUMNS = (
    "m.pk, m.id, m.namespace, m.text, m.tags, m.importance, m.metadata, m.created_at, m.updated_at, "
    "m.last_accessed_at, m.access_count, m.expires_at, m.superseded_by, m.content_hash"
)


def _memory(r: Sequence[Any]) -> Memory:
    return Memory(
        key=r[0],
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
    )


def filter_sql(where: MemoryFilter, alias: str = "m") -> tuple[str, list[Any]]:
    """The one translation of a MemoryFilter into a WHERE clause (with its parameters)."""
    a = alias
    clauses: list[str] = []
    params: list[Any] = []
    if where.namespace is not None:
        clauses.append(f"{a}.namespace = ?")
        params.append(where.namespace)
    if where.ids is not None:
        clauses.append(f"{a}.id IN (SELECT value FROM json_each(?))")
        params.append(json.dumps(list(where.ids)))
    if where.key_after is not None:
        clauses.append(f"{a}.pk > ?")
        params.append(where.key_after)
    if where.key_upto is not None:
        clauses.append(f"{a}.pk <= ?")
        params.append(where.key_upto)
    for tag in where.tags:
        clauses.append(f"EXISTS (SELECT 1 FROM json_each({a}.tags) WHERE json_each.value = ?)")
        params.append(tag)
    if where.created_since is not None:
        clauses.append(f"{a}.created_at >= ?")
        params.append(where.created_since)
    if where.created_until is not None:
        clauses.append(f"{a}.created_at <= ?")
        params.append(where.created_until)
    if where.created_before is not None:
        clauses.append(f"{a}.created_at < ?")
        params.append(where.created_before)
    if where.expired_at is not None:
        clauses.append(f"{a}.expires_at IS NOT NULL AND {a}.expires_at <= ?")
        params.append(where.expired_at)
    if where.max_importance is not None:
        clauses.append(f"{a}.importance <= ?")
        params.append(where.max_importance)
    if where.unused_since is not None:
        clauses.append(f"max({a}.updated_at, coalesce({a}.last_accessed_at, 0)) < ?")
        params.append(where.unused_since)
    if where.superseded_by is not None:
        clauses.append(f"{a}.superseded_by = ?")
        params.append(where.superseded_by)
    if where.live_at is not None:
        # Live: not expired, and not superseded by a memory that is still there and unexpired.
        clauses.append(
            f"({a}.expires_at IS NULL OR {a}.expires_at > ?) AND ({a}.superseded_by IS NULL OR NOT EXISTS ("
            f"SELECT 1 FROM memories s WHERE s.id = {a}.superseded_by AND (s.expires_at IS NULL OR s.expires_at > ?)))"
        )
        params.extend([where.live_at, where.live_at])
    return (" AND ".join(clauses) or "1"), params


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


class SqliteMemories:
    def __init__(self, database: Database):
        self.db = database

    def remember(self, new: NewMemory, merge: Merge) -> tuple[Memory, bool]:
        def txn(db: Connection) -> tuple[Memory, bool]:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM memories m WHERE m.namespace = ? AND m.content_hash = ?",
                (new.namespace, new.content_hash),
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO memories (id, namespace, text, content_hash, tags, importance, metadata, "
                    "created_at, updated_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        new.id,
                        new.namespace,
                        new.text,
                        new.content_hash,
                        json.dumps(new.tags, ensure_ascii=False),
                        new.importance,
                        json.dumps(new.metadata, ensure_ascii=False),
                        new.created_at,
                        new.created_at,
                        new.expires_at,
                    ),
                )
                stored = _memory(db.execute(f"SELECT {_COLUMNS} FROM memories m WHERE m.id = ?", (new.id,)).fetchone())
                self._supersede_by(db, stored, new.supersedes)
                return stored, False
            existing = _memory(row)
            update = merge(existing, new)
            db.execute(
                "UPDATE memories SET tags = ?, importance = ?, metadata = ?, updated_at = ?, expires_at = ?, "
                "superseded_by = ? WHERE pk = ?",
                (
                    json.dumps(update.tags, ensure_ascii=False),
                    update.importance,
                    json.dumps(update.metadata, ensure_ascii=False),
                    update.updated_at,
                    update.expires_at,
                    update.superseded_by,
                    existing.key,
                ),
            )
            stored = _memory(
                db.execute(f"SELECT {_COLUMNS} FROM memories m WHERE m.pk = ?", (existing.key,)).fetchone()
            )
            self._supersede_by(db, stored, new.supersedes)
            return stored, True

        return self.db.write(txn)

    @staticmethod
    def _supersede_by(db: Connection, stored: Memory, ids: Sequence[str]) -> None:
        """Mark `ids` (of stored's namespace) as superseded by stored, unless a live memory already supersedes
        one (an earlier correction stays in force: forgetting this one must not bring the old text back)."""
        targets = [i for i in ids if i != stored.id]
        if not targets:
            return
        wanted = json.dumps(targets)
        found = {
            i
            for (i,) in db.execute(
                "SELECT id FROM memories WHERE namespace = ? AND id IN (SELECT value FROM json_each(?))",
                (stored.namespace, wanted),
            )
        }
        missing = sorted(set(targets) - found)
        if missing:
            raise UnknownMemories(missing)  # the transaction rolls back: nothing is written
        db.execute(
            "UPDATE memories SET superseded_by = ? WHERE namespace = ? AND id IN (SELECT value FROM json_each(?)) "
            "AND (superseded_by IS NULL OR NOT EXISTS (SELECT 1 FROM memories s WHERE s.id = memories.superseded_by "
            "AND (s.expires_at IS NULL OR s.expires_at > ?)))",
            (stored.id, stored.namespace, wanted, stored.updated_at),
        )

    def get(self, namespace: str | None, ids: Sequence[str]) -> list[Memory]:
        return self.find(MemoryFilter(namespace=namespace, ids=tuple(ids)))

    def get_by_keys(self, namespace: str, keys: Sequence[int]) -> dict[int, Memory]:
        def q(db: Connection) -> dict[int, Memory]:
            return {r[0]: _memory(r) for r in _rows_of_keys(db, _COLUMNS, namespace, keys)}

        return self.db.read(q) if keys else {}

    def texts(self, namespace: str, keys: Sequence[int], prefix: int | None = None) -> dict[int, str]:
        column = "m.text" if prefix is None else f"substr(m.text, 1, {int(prefix)})"
        return self.db.read(lambda db: dict(_rows_of_keys(db, f"m.pk, {column}", namespace, keys))) if keys else {}

    def find(self, where: MemoryFilter) -> list[Memory]:
        sql, params = filter_sql(where)
        return self.db.read(
            lambda db: [
                _memory(r) for r in db.execute(f"SELECT {_COLUMNS} FROM memories m WHERE {sql} ORDER BY m.pk", params)
            ]
        )

    def find_by_content(self, pairs: Sequence[tuple[str, str]]) -> list[Memory]:
        if not pairs:
            return []
        return self.db.read(
            lambda db: [
                _memory(r)
                for r in db.execute(
                    f"SELECT {_COLUMNS} FROM memories m WHERE (m.namespace, m.content_hash) IN "
                    "(SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?))",
                    (json.dumps([list(p) for p in pairs]),),
                )
            ]
        )

    def scan(self, after_key: int, limit: int, namespaces: Sequence[str] | None = None) -> list[Memory]:
        scope = "" if namespaces is None else " AND m.namespace IN (SELECT value FROM json_each(?))"
        params: list[Any] = [after_key] + ([] if namespaces is None else [json.dumps(list(namespaces))])
        return self.db.read(
            lambda db: [
                _memory(r)
                for r in db.execute(
                    f"SELECT {_COLUMNS} FROM memories m WHERE m.pk > ?{scope} ORDER BY m.pk LIMIT ?", [*params, limit]
                )
            ]
        )

    def restore(self, items: Iterable[tuple[Memory, tuple[str, Vector] | None]]) -> tuple[int, int]:
        def txn(db: Connection) -> tuple[int, int]:
            added = skipped = 0
            for m, vector in items:
                row = db.execute(
                    "INSERT INTO memories (id, namespace, text, content_hash, tags, importance, metadata, created_at, "
                    "updated_at, last_accessed_at, access_count, expires_at, superseded_by) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING pk",
                    (
                        m.id,
                        m.namespace,
                        m.text,
                        m.content_hash,
                        json.dumps(m.tags, ensure_ascii=False),
                        m.importance,
                        json.dumps(m.metadata, ensure_ascii=False),
                        m.created_at,
                        m.updated_at,
                        m.last_accessed_at,
                        m.access_count,
                        m.expires_at,
                        m.superseded_by,
                    ),
                ).fetchone()
                if row is None:
                    skipped += 1
                    continue
                added += 1
                if vector is not None:
                    model_id, values = vector
                    db.execute(
                        "INSERT INTO embeddings (memory_pk, model, content_hash, vector) VALUES (?, ?, ?, ?)",
                        (row[0], model_id, m.content_hash, to_blob(values)),
                    )
            return added, skipped

        return self.db.write(txn)

    def superseding(self, ids: Sequence[str]) -> list[tuple[str, str]]:
        def q(db: Connection) -> list[tuple[str, str]]:
            out: list[tuple[str, str]] = []
            for chunk in chunks(list(ids)):
                marks = ",".join("?" * len(chunk))
                out.extend(
                    db.execute("SELECT superseded_by, namespace FROM memories WHERE superseded_by IS NOT NULL "
                        f"AND superseded_by IN ({marks})",
                        chunk,)
                )
            return out

        return self.db.read(q) if ids else []

    def recent(
        self,
        namespace: str,
        limit: int,
        before_key: int | None = None,
        tags: Sequence[str] = (),
        after_key: int | None = None,
    ) -> list[Memory]:
        sql, params = filter_sql(MemoryFilter(namespace=namespace, tags=tuple(tags)))
        if after_key is not None:
            # The `limit` just above after_key, nearest first; then newest first like every page.
            query = f"SELECT {_COLUMNS} FROM memories m WHERE {sql} AND m.pk > ? ORDER BY m.pk LIMIT ?"
            args: tuple[Any, ...] = (*params, after_key, limit)
            return self.db.read(lambda db: [_memory(r) for r in db.execute(query, args)][::-1])
        return self.db.read(
            lambda db: [
                _memory(r)
                for r in db.execute(
                    f"SELECT {_COLUMNS} FROM memories m WHERE {sql} AND m.pk < ? ORDER BY m.pk DESC LIMIT ?",
                    (*params, before_key if before_key is not None else 2**63 - 1, limit),
                )
            ]
        )

    def edit(self, namespace: str, memory_id: str, change: Change) -> Memory | None:
        def txn(db: Connection) -> Memory | None:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM memories m WHERE m.namespace = ? AND m.id = ?", (namespace, memory_id)
            ).fetchone()
            if row is None:
                return None
            edited = change(_memory(row))
            db.execute(
                "UPDATE memories SET tags = ?, importance = ?, expires_at = ? WHERE pk = ?",
                (json.dumps(edited.tags, ensure_ascii=False), edited.importance, edited.expires_at, row[0]),
            )
            return _memory(db.execute(f"SELECT {_COLUMNS} FROM memories m WHERE m.pk = ?", (row[0],)).fetchone())

        return self.db.write(txn)

    def created_per_day(self, since: float) -> list[tuple[str, str, int]]:
        return self.db.read(
            lambda db: [
                (namespace, day, count)
                for namespace, day, count in db.execute(
                    "SELECT namespace, date(created_at, 'unixepoch') AS day, count(*) FROM memories "
                    "WHERE created_at >= ? GROUP BY day, namespace ORDER BY day, namespace",
                    (since,),
                )
            ]
        )

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

    def supersede(self, pairs: Sequence[tuple[str, str]], now: float) -> list[str]:
        def txn(db: Connection) -> list[str]:
            marked: list[str] = []
            for lose, keep in pairs:
                marked += [
                    i
                    for (i,) in db.execute(
                        "UPDATE memories SET superseded_by = ?1 WHERE id = ?2 AND superseded_by IS NULL AND EXISTS ("
                        "SELECT 1 FROM memories k WHERE k.id = ?1 AND k.superseded_by IS NULL "
                        "AND k.importance >= memories.importance AND (k.expires_at IS NULL OR k.expires_at > ?3)"
                        ") RETURNING id",
                        (keep, lose, now),
                    )
                ]
            return marked

        return self.db.write(txn) if pairs else []

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

    def counts_by_namespace(self) -> dict[str, int]:
        return self.db.read(
            lambda db: dict(
                db.execute("SELECT namespace, count(*) FROM memories GROUP BY namespace ORDER BY namespace")
            )
        )

    def get_setting(self, name: str) -> str | None:
        row = self.db.read(lambda db: db.execute("SELECT value FROM meta WHERE key = ?", (name,)).fetchone())
        return None if row is None else str(row[0])

    def put_setting(self, name: str, value: str) -> None:
        self.db.write(lambda db: db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (name, value)))

    def put_setting_once(self, name: str, value: str) -> str:
        def txn(db: Connection) -> str:
            # An empty stored value counts as none (the core treats "" as unset), so it is replaced.
            db.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value WHERE meta.value = ''",
                (name, value),
            )
            return str(db.execute("SELECT value FROM meta WHERE key = ?", (name,)).fetchone()[0])

        return self.db.write(txn)


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
