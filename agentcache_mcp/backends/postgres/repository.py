"""The memories table and the per-model vector tables: PostgreSQL's MemoryRepository and EmbeddingStore.

Writes to one namespace are serialised by a transaction-level advisory lock on the namespace, taken before
anything is read: within a namespace keys then increase in commit order (recall's neighbours and the keyword
context depend on that order), a remember and a forget of the memory before it cannot interleave (the new
memory would be indexed with the forgotten text as its context), and two replicas remembering the same text
at once merge instead of one failing on the unique (namespace, content_hash) index.

A remember of new text (nothing superseded) is one statement and one round trip: the server-side function
agentcache_remember takes that lock and inserts, committed before the server answers; the commit's WAL flush is
most of its time. Re-remembered text (a merge) and a correction (supersedes) take a transaction of their own.
An import's batch is a COPY into a temporary table and one INSERT ... SELECT per chunk of memories, and
the embedding writer's batch one statement: the statements no longer grow with the rows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from psycopg import sql

from ...memory.model import Memory, MemoryFilter, NewMemory
from ...memory.ports import Merge, Vector
from ..sql import COLUMNS, Dialect, SqlMemories, content_values
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


_NAMESPACE_LOCK = "ns:"
"""The advisory lock of namespace N is named 'ns:' + N."""


def lock_namespaces(db: Connection, namespaces: Iterable[str]) -> None:
    """Take the write lock of each namespace (sorted, so two transactions never wait on each other in a
    cycle); held until the transaction ends."""
    for namespace in sorted(set(namespaces)):
        db.execute(f"SELECT pg_advisory_xact_lock({lock_key('%s')})", (_NAMESPACE_LOCK + namespace,))


RESTORE_CHUNK_SECONDS = 0.05
"""About how long one COPY and INSERT of a restore may take: the caller (an import's batch) can stop taking
memories only between two, so it overruns its deadline, and holds the namespace's write lock, about this much
longer at most. The chunk's size follows the time per memory measured so far (inserting vectors into a large
HNSW index costs milliseconds each; memories alone, tenths)."""
RESTORE_CHUNK_MIN, RESTORE_CHUNK_MAX = 16, 500
_STAGING_TABLE = (
    "CREATE TEMPORARY TABLE agentcache_restore (position BIGINT, id TEXT, namespace TEXT, text TEXT, "
    "content_hash TEXT, tags TEXT, importance DOUBLE PRECISION, metadata TEXT, created_at DOUBLE PRECISION, "
    "updated_at DOUBLE PRECISION, last_accessed_at DOUBLE PRECISION, access_count BIGINT, "
    "expires_at DOUBLE PRECISION, superseded_by TEXT, model TEXT, vector vector) ON COMMIT DROP"
)
_STAGING_COLUMNS = (
    "position, id, namespace, text, content_hash, tags, importance, metadata, created_at, updated_at, "
    "last_accessed_at, access_count, expires_at, superseded_by, model, vector"
)
_STAGING_TYPES = [
    "int8", "text", "text", "text", "text", "text", "float8", "text", "float8", "float8", "float8", "int8", "float8",
    "text", "text", "vector",
]  # fmt: skip


class PgMemories(SqlMemories[Connection]):
    dialect = POSTGRES
    db: Database  # PostgreSQL's: its writes may run in autocommit

    def __init__(self, database: Database):
        super().__init__(database)
        self._chunk = RESTORE_CHUNK_MIN
        """Memories in the next COPY of a restore (see RESTORE_CHUNK_SECONDS)."""
        self.defer_vector_index = False
        """A bulk load is on (PostgresBackend.bulk_load): a vector table a restore creates gets its HNSW index at
        the load's end."""

    def _lock_namespaces(self, db: Connection, namespaces: Iterable[str]) -> None:
        lock_namespaces(db, namespaces)

    def remember(self, new: NewMemory, merge: Merge) -> tuple[Memory, bool]:
        if not new.supersedes:
            # The common case in one statement (one round trip): agentcache_remember takes the namespace lock,
            # then inserts, or returns the memory that already has this text. That one is merged below, in a
            # transaction of its own that reads it again under the lock (it may have changed or gone since).
            row = self.db.write(
                lambda db: db.execute(
                    f"SELECT {_COLUMNS} FROM agentcache_remember({lock_key('%s')}, %s, %s, %s, %s, %s, %s, %s, %s, "
                    "%s) AS m",
                    (
                        _NAMESPACE_LOCK + new.namespace,
                        *content_values(new),
                        new.created_at,
                        new.expires_at,
                    ),
                ).fetchone(),
                autocommit=True,
            )
            assert row is not None, "agentcache_remember returns the stored memory"
            if row[1] == new.id:
                return _memory(row), False

        return super().remember(new, merge)  # a merge, or a correction: the shared flow, in one transaction

    def get_by_keys(self, namespace: str, keys: Sequence[int]) -> dict[int, Memory]:
        if not keys:
            return {}
        return self.db.query(
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
        return self.db.query(
            lambda db: {
                int(pk): text
                for pk, text in db.execute(
                    "SELECT pk, CASE WHEN %s::int IS NULL THEN text ELSE left(text, %s::int) END FROM memories "
                    "WHERE pk = ANY(%s) AND namespace = %s",
                    (prefix, prefix, [int(k) for k in keys], namespace),
                )
            }
        )

    def restore(self, items: Iterable[tuple[Memory, tuple[str, Vector] | None]]) -> tuple[int, int]:
        """COPY into a staging table, then one INSERT ... SELECT per chunk of memories (RESTORE_CHUNK_SECONDS): keys are
        assigned in the order given (ORDER BY the position), the insert trigger reads each memory's predecessor
        (rows inserted before it by the same statement included), ON CONFLICT DO NOTHING skips what is stored
        (same id, or same text in the namespace: also earlier in the same chunk), and the vectors of the memories
        it added go into their model's table in the same statement. The items are taken a chunk at a time, so
        a caller that stops taking items after a while (the import's batch deadline) sees the writes' time."""

        def txn(db: Connection) -> tuple[int, int]:
            added = skipped = 0
            locked: set[str] = set()
            tables: dict[tuple[str, int], str] = {}
            """(model, dim) -> its table, checked in this transaction."""
            db.execute(_STAGING_TABLE)
            position = 0
            chunk: list[tuple[Memory, tuple[str, Vector] | None]] = []
            iterator = iter(items)
            while True:
                chunk.clear()
                for item in iterator:
                    chunk.append(item)
                    if len(chunk) >= self._chunk:
                        break
                if not chunk:
                    return added, skipped
                started = time.monotonic()
                lock_namespaces(db, {m.namespace for m, _ in chunk} - locked)
                locked.update(m.namespace for m, _ in chunk)
                for _, vector in chunk:  # before the COPY: nothing else can be sent while it runs
                    if vector is not None and (vector[0], np.asarray(vector[1]).size) not in tables:
                        dim = np.asarray(vector[1]).size
                        tables[vector[0], dim] = ensure_vector_table(  # StoreError: another dim
                            db, vector[0], dim, with_index=not self.defer_vector_index
                        )
                first = position
                with db.cursor().copy(f"COPY agentcache_restore ({_STAGING_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(_STAGING_TYPES)
                    for m, vector in chunk:
                        model_id, values = (None, None) if vector is None else vector
                        copy.write_row(
                            (
                                position,
                                *content_values(m),
                                m.created_at,
                                m.updated_at,
                                m.last_accessed_at,
                                m.access_count,
                                m.expires_at,
                                m.superseded_by,
                                model_id,
                                None if values is None else np.asarray(values, dtype=np.float32).reshape(-1),
                            )
                        )
                        position += 1
                models = sorted({vector[0] for _, vector in chunk if vector is not None})
                vector_inserts = [
                    sql.SQL(
                        ", {} AS (INSERT INTO {} (memory_pk, namespace, content_hash, vector) SELECT a.pk, a.namespace, "
                        "a.content_hash, s.vector FROM added a JOIN (SELECT DISTINCT ON (id, content_hash) id, content_hash, "
                        "model, vector FROM agentcache_restore WHERE position >= %(first)s "
                        "ORDER BY id, content_hash, position) s ON s.id = a.id AND s.content_hash = a.content_hash "
                        "WHERE s.model = {})"
                    ).format(sql.Identifier(f"vectors_{i}"), sql.Identifier(vector_table_name(model_id)), sql.Literal(model_id))
                    for i, model_id in enumerate(models)
                ]
                row = db.execute(
                    sql.SQL(
                        "WITH added AS (INSERT INTO memories (id, namespace, text, content_hash, tags, importance, "
                        "metadata, created_at, updated_at, last_accessed_at, access_count, expires_at, superseded_by) "
                        "SELECT id, namespace, text, content_hash, tags::jsonb, importance, metadata, created_at, "
                        "updated_at, last_accessed_at, access_count, expires_at, superseded_by FROM agentcache_restore "
                        "WHERE position >= %(first)s ORDER BY position ON CONFLICT DO NOTHING "
                        "RETURNING pk, id, namespace, content_hash){} SELECT count(*) FROM added"
                    ).format(sql.SQL("").join(vector_inserts)),
                    {"first": first},
                ).fetchone()
                stored = int(row[0]) if row else 0
                added += stored
                skipped += len(chunk) - stored
                per_memory = max(time.monotonic() - started, 1e-6) / len(chunk)
                self._chunk = max(RESTORE_CHUNK_MIN, min(RESTORE_CHUNK_MAX, int(RESTORE_CHUNK_SECONDS / per_memory)))

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
        return self.db.query(
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

        return self.db.query(q)

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
        self._dims: dict[str, int] = {}
        """The dimension of each model's table, once this process checked or created it."""

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
        """One statement for the whole batch: each vector is stored only if its memory still has the text it was
        made from, and the batch's claims are released."""
        if not items:
            return 0
        latest = {int(key): (digest, np.asarray(vector, dtype=np.float32).reshape(-1)) for key, digest, vector in items}
        keys = list(latest)
        dim = len(latest[keys[0]][1])

        checked = self._dims.get(model_id) == dim

        def txn(db: Connection) -> int:
            if not checked:  # once per model and process: tables are never dropped
                ensure_vector_table(db, model_id, dim)
            row = db.execute(
                sql.SQL(
                    "WITH written AS (INSERT INTO {} (memory_pk, namespace, content_hash, vector) "
                    "SELECT m.pk, m.namespace, m.content_hash, v.vector "
                    "FROM unnest(%(keys)s::bigint[], %(digests)s::text[], %(vectors)s::vector[]) AS v(pk, digest, vector) "
                    "JOIN memories m ON m.pk = v.pk AND m.content_hash = v.digest "
                    "ON CONFLICT (memory_pk) DO UPDATE SET content_hash = excluded.content_hash, vector = excluded.vector "
                    "RETURNING 1), "
                    "released AS (DELETE FROM embedding_claims WHERE model = %(model)s AND memory_pk = ANY(%(keys)s)) "
                    "SELECT count(*) FROM written"
                ).format(sql.Identifier(vector_table_name(model_id))),
                {
                    "keys": keys,
                    "digests": [latest[k][0] for k in keys],
                    "vectors": [latest[k][1] for k in keys],
                    "model": model_id,
                },
            ).fetchone()
            return int(row[0]) if row else 0

        written = self.db.write(txn, autocommit=checked)
        if not checked:  # remembered once committed: a table created by a transaction that failed is not there
            self._tables.add(vector_table_name(model_id))
            self._dims[model_id] = dim
        return written

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
