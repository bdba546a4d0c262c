"""The memories table and the per-model vector tables: PostgreSQL's MemoryRepository and EmbeddingStore.

Writes to one namespace are serialised by a transaction-level advisory lock on the namespace, taken before
anything is read: within a namespace keys then increase in commit order (recall's neighbours and the keyword
context depend on that order), a remember and a forget of the memory before it cannot interleave (the new
memory would be indexed with the forgotten text as its context), and two replicas remembering the same text
at once merge instead of one failing on the unique (namespace, content_hash) index.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from psycopg import sql

from ...memory.model import Memory, MemoryFilter, NewMemory
from ...memory.ports import Merge, Vector
from ..sql import COLUMNS, Dialect, SqlMemories
from ..sql import filter_sql as dialect_filter_sql
from .connection import Connection, Database, lock_key
from .schema import ensure_vector_table, vector_table_name


class PostgresDialect(Dialect):
    """Lists travel as arrays (= ANY), a tag test is jsonb containment (@>)."""

    mark = "%s"
    greatest = "greatest"
    for_update = " FOR UPDATE"  # edit: writers of one namespace do not otherwise exclude each other

    def in_list(self, column: str) -> str:
        return f"{column} = ANY(%s)"

    def values(self, items: Sequence[Any]) -> list[Any]:
        return list(items)

    def has_tags(self, column: str, tags: Sequence[str]) -> tuple[list[str], list[Any]]:
        return [f"{column} @> %s::jsonb"], [json.dumps(list(tags))]

    def in_pairs(self, columns: str, pairs: Sequence[tuple[str, str]]) -> tuple[str, list[Any]]:
        rows = "SELECT * FROM unnest(%s::text[], %s::text[])"
        return f"{columns} IN ({rows})", [[namespace for namespace, _ in pairs], [digest for _, digest in pairs]]

    def day(self, column: str) -> str:
        return f"to_char(to_timestamp({column}) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"

    def tags_of(self, stored: Any) -> list[str]:
        return list(stored)  # jsonb: psycopg has decoded it


POSTGRES = PostgresDialect()
_COLUMNS = COLUMNS
_memory = POSTGRES.memory


def as_array(value: Any) -> Vector:
    """A vector as pgvector's adapter returns it (its Vector type) as a float32 array."""
    to_numpy = getattr(value, "to_numpy", None)
    return np.asarray(to_numpy() if to_numpy is not None else value, dtype=np.float32)


def filter_sql(where: MemoryFilter, alias: str = "m") -> tuple[str, list[Any]]:
    """The MemoryFilter as a WHERE clause of PostgreSQL's (the keyword and vector retrievers use it too)."""
    return dialect_filter_sql(where, POSTGRES, alias)


def lock_namespaces(db: Connection, namespaces: Iterable[str]) -> None:
    """Take the write lock of each namespace (sorted, so two transactions never wait on each other in a
    cycle); held until the transaction ends."""
    for namespace in sorted(set(namespaces)):
        db.execute(f"SELECT pg_advisory_xact_lock({lock_key('%s')})", ("ns:" + namespace,))


class PgMemories(SqlMemories[Connection]):
    dialect = POSTGRES

    def _lock_namespaces(self, db: Connection, namespaces: Iterable[str]) -> None:
        lock_namespaces(db, namespaces)

    def _insert_vector(self, db: Connection, key: int, memory: Memory, model_id: str, vector: Vector) -> None:
        values = np.asarray(vector, dtype=np.float32)
        table = ensure_vector_table(db, model_id, len(values))
        db.execute(
            sql.SQL("INSERT INTO {} (memory_pk, namespace, content_hash, vector) VALUES (%s, %s, %s, %s)").format(
                sql.Identifier(table)
            ),
            (key, memory.namespace, memory.content_hash, values),
        )

    def remember(self, new: NewMemory, merge: Merge) -> tuple[Memory, bool]:
        def txn(db: Connection) -> tuple[Memory, bool]:
            lock_namespaces(db, [new.namespace])
            row = db.execute(
                f"SELECT {_COLUMNS} FROM memories m WHERE m.namespace = %s AND m.content_hash = %s",
                (new.namespace, new.content_hash),
            ).fetchone()
            if row is None:
                inserted = db.execute(
                    "INSERT INTO memories AS m (id, namespace, text, content_hash, tags, importance, metadata, "
                    "created_at, updated_at, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                    f"RETURNING {_COLUMNS}",
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
                ).fetchone()
                assert inserted is not None
                stored = _memory(inserted)
                self._supersede_by(db, stored, new.supersedes)
                return stored, False
            existing = _memory(row)
            update = merge(existing, new)
            updated = db.execute(
                "UPDATE memories AS m SET tags = %s, importance = %s, metadata = %s, updated_at = %s, "
                f"expires_at = %s, superseded_by = %s WHERE pk = %s RETURNING {_COLUMNS}",
                (
                    json.dumps(update.tags, ensure_ascii=False),
                    update.importance,
                    json.dumps(update.metadata, ensure_ascii=False),
                    update.updated_at,
                    update.expires_at,
                    update.superseded_by,
                    existing.key,
                ),
            ).fetchone()
            assert updated is not None
            stored = _memory(updated)
            self._supersede_by(db, stored, new.supersedes)
            return stored, True

        return self.db.write(txn)

    def get_by_keys(self, namespace: str, keys: Sequence[int]) -> dict[int, Memory]:
        if not keys:
            return {}
        return self.db.read(
            lambda db: {
                r[0]: _memory(r)
                for r in db.execute(
                    f"SELECT {_COLUMNS} FROM memories m WHERE m.pk = ANY(%s) AND m.namespace = %s",
                    ([int(k) for k in keys], namespace),
                )
            }
        )

    def texts(self, namespace: str, keys: Sequence[int], prefix: int | None = None) -> dict[int, str]:
        if not keys:
            return {}
        return self.db.read(
            lambda db: {
                int(pk): text
                for pk, text in db.execute(
                    "SELECT pk, CASE WHEN %s::int IS NULL THEN text ELSE left(text, %s::int) END FROM memories "
                    "WHERE pk = ANY(%s) AND namespace = %s",
                    (prefix, prefix, [int(k) for k in keys], namespace),
                )
            }
        )

    def find(self, where: MemoryFilter) -> list[Memory]:
        clause, params = filter_sql(where)
        return self.db.read(
            lambda db: [
                _memory(r)
                for r in db.execute(f"SELECT {_COLUMNS} FROM memories m WHERE {clause} ORDER BY m.pk", params)
            ]
        )

    def restore(self, items: Iterable[tuple[Memory, tuple[str, Vector] | None]]) -> tuple[int, int]:
        def txn(db: Connection) -> tuple[int, int]:
            added = skipped = 0
            locked: set[str] = set()
            for m, vector in items:
                if m.namespace not in locked:
                    lock_namespaces(db, [m.namespace])
                    locked.add(m.namespace)
                row = db.execute(
                    "INSERT INTO memories (id, namespace, text, content_hash, tags, importance, metadata, created_at, "
                    "updated_at, last_accessed_at, access_count, expires_at, superseded_by) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING pk",
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
                    values = np.asarray(values, dtype=np.float32)
                    table = ensure_vector_table(db, model_id, len(values))
                    db.execute(
                        sql.SQL(
                            "INSERT INTO {} (memory_pk, namespace, content_hash, vector) VALUES (%s, %s, %s, %s)"
                        ).format(sql.Identifier(table)),
                        (row[0], m.namespace, m.content_hash, values),
                    )
            return added, skipped

        return self.db.write(txn)

    def delete(self, where: MemoryFilter, limit: int | None = None) -> list[str]:
        clause, params = filter_sql(where)
        if limit is not None:
            clause = f"m.pk IN (SELECT m.pk FROM memories m WHERE {clause} ORDER BY m.pk LIMIT %s)"
            params = [*params, limit]

        def txn(db: Connection) -> list[str]:
            if where.namespace is not None:
                namespaces = [where.namespace]
            else:  # a store-wide sweep: lock the namespaces it may touch, and touch no other
                namespaces = [
                    n for (n,) in db.execute(f"SELECT DISTINCT m.namespace FROM memories m WHERE {clause}", params)
                ]
                if not namespaces:
                    return []
            lock_namespaces(db, namespaces)
            rows = db.execute(
                f"DELETE FROM memories AS m WHERE {clause} AND m.namespace = ANY(%s) RETURNING pk, id",
                [*params, namespaces],
            ).fetchall()
            return [memory_id for _, memory_id in sorted(rows)]

        return self.db.write(txn)

    def live_keys(self, namespace: str, keys: Sequence[int], where: MemoryFilter) -> set[int]:
        if not keys:
            return set()
        clause, params = filter_sql(where)
        return self.db.read(
            lambda db: {
                pk
                for (pk,) in db.execute(
                    f"SELECT m.pk FROM memories m WHERE m.pk = ANY(%s) AND m.namespace = %s AND {clause}",
                    [[int(k) for k in keys], namespace, *params],
                )
            }
        )

    def neighbours(
        self, namespace: str, keys: Sequence[int], width: int
    ) -> dict[int, list[tuple[int | None, int | None]]]:
        if width < 1 or not keys:
            return {int(k): [] for k in keys}

        def q(db: Connection) -> dict[int, list[tuple[int | None, int | None]]]:
            rows = db.execute(
                "SELECT k, "
                "ARRAY(SELECT pk FROM memories WHERE namespace = %(ns)s AND pk < k ORDER BY pk DESC LIMIT %(w)s), "
                "ARRAY(SELECT pk FROM memories WHERE namespace = %(ns)s AND pk > k ORDER BY pk LIMIT %(w)s) "
                "FROM unnest(%(keys)s::bigint[]) AS k",
                {"ns": namespace, "w": width, "keys": [int(k) for k in keys]},
            )
            out: dict[int, list[tuple[int | None, int | None]]] = {}
            for key, before, after in rows:
                before = list(before) + [None] * (width - len(before))
                after = list(after) + [None] * (width - len(after))
                out[key] = list(zip(before, after, strict=True))
            return out

        return self.db.read(q)

    def record_access(self, accesses: Mapping[int, tuple[int, float]]) -> None:
        if not accesses:
            return
        keys = sorted(accesses)  # one order for every writer: no deadlock between two flushes

        def txn(db: Connection) -> None:
            db.execute(
                "UPDATE memories m SET access_count = m.access_count + a.count, "
                "last_accessed_at = greatest(coalesce(m.last_accessed_at, 0), a.last) "
                "FROM unnest(%s::bigint[], %s::bigint[], %s::float8[]) AS a(pk, count, last) WHERE m.pk = a.pk",
                (keys, [accesses[k][0] for k in keys], [accesses[k][1] for k in keys]),
            )

        self.db.write(txn)

class PgEmbeddings:
    """The vectors of each model in that model's table; the backlog is every memory without a row there."""

    def __init__(self, database: Database):
        self.db = database
        self._tables: set[str] = set()
        """Vector tables seen to exist (a cache only: tables are never dropped)."""

    def table(self, db: Connection, model_id: str) -> str | None:
        """The model's vector table, or None while no vector of that model was ever written."""
        name = vector_table_name(model_id)
        if name in self._tables:
            return name
        if db.execute("SELECT 1 FROM vector_models WHERE model = %s", (model_id,)).fetchone() is None:
            return None
        self._tables.add(name)
        return name

    def _not_embedded(self, db: Connection, model_id: str) -> sql.Composable:
        table = self.table(db, model_id)
        if table is None:
            return sql.SQL("TRUE")
        return sql.SQL("NOT EXISTS (SELECT 1 FROM {} e WHERE e.memory_pk = m.pk)").format(sql.Identifier(table))

    def pending(self, model_id: str, limit: int, after_key: int = 0) -> list[tuple[int, str, str]]:
        def q(db: Connection) -> list[tuple[int, str, str]]:
            return db.execute(
                sql.SQL(
                    "SELECT m.pk, m.text, m.content_hash FROM memories m WHERE m.pk > %s AND {} ORDER BY m.pk LIMIT %s"
                ).format(self._not_embedded(db, model_id)),
                (after_key, limit),
            ).fetchall()

        return self.db.read(q)

    def claim(self, model_id: str, limit: int, after_key: int = 0, lease_s: float = 60.0) -> list[tuple[int, str, str]]:
        """Pending rows no live claim holds, claimed for lease_s. FOR UPDATE SKIP LOCKED: two replicas claiming
        at the same moment take different rows instead of waiting for each other. A claim statement that
        started just before another's committed does not see that claim in its snapshot, but its insert meets
        the committed claim row (the unique key) and the upsert only takes over an expired lease, checked on
        the newest row version: a row is claimed by one live writer at a time."""

        def txn(db: Connection) -> list[tuple[int, str, str]]:
            return db.execute(
                sql.SQL(
                    "WITH picked AS ("
                    " SELECT m.pk FROM memories m WHERE m.pk > %(after)s AND {} AND NOT EXISTS ("
                    "  SELECT 1 FROM embedding_claims c WHERE c.memory_pk = m.pk AND c.model = %(model)s"
                    "  AND c.claimed_until > clock_timestamp())"
                    " ORDER BY m.pk LIMIT %(limit)s FOR UPDATE OF m SKIP LOCKED"
                    "), claimed AS ("
                    " INSERT INTO embedding_claims (memory_pk, model, claimed_until)"
                    " SELECT pk, %(model)s, clock_timestamp() + make_interval(secs => %(lease)s) FROM picked"
                    " ON CONFLICT (memory_pk, model) DO UPDATE SET claimed_until = excluded.claimed_until"
                    " WHERE embedding_claims.claimed_until <= clock_timestamp()"
                    " RETURNING memory_pk"
                    ") SELECT m.pk, m.text, m.content_hash FROM memories m JOIN claimed c ON c.memory_pk = m.pk "
                    "ORDER BY m.pk"
                ).format(self._not_embedded(db, model_id)),
                {"after": after_key, "model": model_id, "limit": limit, "lease": float(lease_s)},
            ).fetchall()

        return self.db.write(txn)

    def count_pending(self, model_id: str) -> int:
        def q(db: Connection) -> int:
            row = db.execute(
                sql.SQL("SELECT count(*) FROM memories m WHERE {}").format(self._not_embedded(db, model_id))
            ).fetchone()
            return int(row[0]) if row else 0

        return self.db.read(q)

    def first_pending_key(self, model_id: str) -> int | None:
        def q(db: Connection) -> int | None:
            row = db.execute(
                sql.SQL("SELECT min(m.pk) FROM memories m WHERE {}").format(self._not_embedded(db, model_id))
            ).fetchone()
            return None if row is None else row[0]

        return self.db.read(q)

    def max_key(self) -> int:
        def q(db: Connection) -> int:
            row = db.execute("SELECT coalesce(max(pk), 0) FROM memories").fetchone()
            return int(row[0]) if row else 0

        return self.db.read(q)

    def write(self, model_id: str, items: Sequence[tuple[int, str, Vector]]) -> int:
        if not items:
            return 0

        def txn(db: Connection) -> int:
            table = ensure_vector_table(db, model_id, len(np.asarray(items[0][2]).reshape(-1)))
            self._tables.add(table)
            written = 0
            for key, digest, vector in items:
                written += db.execute(
                    sql.SQL(
                        "INSERT INTO {} (memory_pk, namespace, content_hash, vector) "
                        "SELECT pk, namespace, content_hash, %s FROM memories WHERE pk = %s AND content_hash = %s "
                        "ON CONFLICT (memory_pk) DO UPDATE SET content_hash = excluded.content_hash, "
                        "vector = excluded.vector"
                    ).format(sql.Identifier(table)),
                    (np.asarray(vector, dtype=np.float32).reshape(-1), key, digest),
                ).rowcount
            db.execute(
                "DELETE FROM embedding_claims WHERE model = %s AND memory_pk = ANY(%s)",
                (model_id, [int(key) for key, _, _ in items]),
            )
            return written

        return self.db.write(txn)

    def vectors_of(self, model_id: str, keys: Sequence[int]) -> dict[int, Vector]:
        if not keys:
            return {}

        def q(db: Connection) -> dict[int, Vector]:
            table = self.table(db, model_id)
            if table is None:
                return {}
            return {
                pk: as_array(v)
                for pk, v in db.execute(
                    sql.SQL("SELECT memory_pk, vector FROM {} WHERE memory_pk = ANY(%s)").format(sql.Identifier(table)),
                    ([int(k) for k in keys],),
                )
            }

        return self.db.read(q)
