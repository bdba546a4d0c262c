"""What the SQL backends share: the memories table's columns and their mapping to Memory, the one
translation of a MemoryFilter into a WHERE clause, and the MemoryRepository flows (SqlMemories).

A rule such as "live", what a merge writes or how a correction supersedes, is written once here. Each
backend supplies a Dialect (how it writes a parameter, a list parameter, a tag test, a day) and the
statements that are its own: recall's key lookups (SQLite reads chunked IN lists, PostgreSQL arrays),
deletes (SQLite purges keyword terms, PostgreSQL locks namespaces), access counts. Nothing here adds a
round trip or per-row work to a backend: each flow runs the statements the backend ran before it, or fewer
(SQLite now reads a written row back with RETURNING instead of a second SELECT).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from ..memory.model import MAX_KEY, Memory, MemoryFilter, NewMemory
from ..memory.ports import Change, Merge, UnknownMemories, Vector

T = TypeVar("T")

MEMORY_COLUMNS = (
    "pk",
    "id",
    "namespace",
    "text",
    "tags",
    "importance",
    "metadata",
    "created_at",
    "updated_at",
    "last_accessed_at",
    "access_count",
    "expires_at",
    "superseded_by",
    "content_hash",
)
"""What Dialect.memory reads, in this order."""
COLUMNS = ", ".join(f"m.{column}" for column in MEMORY_COLUMNS)
"""MEMORY_COLUMNS of `memories m`."""
RETURNING = "RETURNING " + ", ".join(MEMORY_COLUMNS)
"""MEMORY_COLUMNS of the row an INSERT or UPDATE wrote (SQLite's RETURNING takes no table alias)."""


class Cursor(Protocol):
    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """What the flows use of sqlite3's and psycopg's connections."""

    def execute(self, sql: Any, parameters: Any = ..., /) -> Cursor: ...


C = TypeVar("C", bound=Connection)


class Database(Protocol):
    def read(self, fn: Callable[[Any], T]) -> T: ...

    def write(self, fn: Callable[[Any], T]) -> T: ...


class Dialect(ABC):
    """How one backend's SQL writes what the shared statements need."""

    mark: ClassVar[str]
    """A parameter."""
    greatest: ClassVar[str]
    """The function giving the larger of two values."""
    for_update: ClassVar[str] = ""
    """What a SELECT adds to lock the row it reads until the transaction ends (where writers do not already
    exclude each other)."""

    @abstractmethod
    def in_list(self, column: str) -> str:
        """`column` equals one of the values of a list parameter (made by `values`)."""

    @abstractmethod
    def values(self, items: Sequence[Any]) -> Any:
        """The list parameter of in_list."""

    @abstractmethod
    def has_tags(self, column: str, tags: Sequence[str]) -> tuple[list[str], list[Any]]:
        """Clauses (with their parameters) true where the tags column holds every one of tags."""

    @abstractmethod
    def in_pairs(self, columns: str, pairs: Sequence[tuple[str, str]]) -> tuple[str, list[Any]]:
        """`(a, b) IN <rows>` for these (a, b) pairs, with its parameters."""

    @abstractmethod
    def day(self, column: str) -> str:
        """The UTC day of an epoch-seconds column, as 'YYYY-MM-DD'."""

    @abstractmethod
    def tags_of(self, stored: Any) -> list[str]:
        """The tags column as the driver returns it, as a list."""

    def marks(self, n: int) -> str:
        return ", ".join([self.mark] * n)

    def memory(self, r: Sequence[Any]) -> Memory:
        """A row of COLUMNS (or RETURNING) as a Memory."""
        return Memory(
            key=r[0],
            id=r[1],
            namespace=r[2],
            text=r[3],
            tags=self.tags_of(r[4]),
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


def filter_sql(where: MemoryFilter, dialect: Dialect, alias: str = "m") -> tuple[str, list[Any]]:
    """The one translation of a MemoryFilter into a WHERE clause (with its parameters)."""
    a, p = alias, dialect.mark
    clauses: list[str] = []
    params: list[Any] = []
    if where.namespace is not None:
        clauses.append(f"{a}.namespace = {p}")
        params.append(where.namespace)
    if where.ids is not None:
        clauses.append(dialect.in_list(f"{a}.id"))
        params.append(dialect.values(where.ids))
    if where.key_after is not None:
        clauses.append(f"{a}.pk > {p}")
        params.append(where.key_after)
    if where.key_upto is not None:
        clauses.append(f"{a}.pk <= {p}")
        params.append(where.key_upto)
    if where.tags:
        tag_clauses, tag_params = dialect.has_tags(f"{a}.tags", where.tags)
        clauses += tag_clauses
        params += tag_params
    if where.created_since is not None:
        clauses.append(f"{a}.created_at >= {p}")
        params.append(where.created_since)
    if where.created_until is not None:
        clauses.append(f"{a}.created_at <= {p}")
        params.append(where.created_until)
    if where.created_before is not None:
        clauses.append(f"{a}.created_at < {p}")
        params.append(where.created_before)
    if where.expired_at is not None:
        clauses.append(f"{a}.expires_at IS NOT NULL AND {a}.expires_at <= {p}")
        params.append(where.expired_at)
    if where.max_importance is not None:
        clauses.append(f"{a}.importance <= {p}")
        params.append(where.max_importance)
    if where.unused_since is not None:
        clauses.append(f"{dialect.greatest}({a}.updated_at, coalesce({a}.last_accessed_at, 0)) < {p}")
        params.append(where.unused_since)
    if where.superseded_by is not None:
        clauses.append(f"{a}.superseded_by = {p}")
        params.append(where.superseded_by)
    if where.live_at is not None:
        # Live: not expired, and not superseded by a memory that is still there and unexpired. A scalar subquery
        # (ids are unique): on PostgreSQL, NOT EXISTS let the planner hash the subquery, a scan of the whole table
        # (55 ms at 10k memories) as soon as one candidate was superseded, where one lookup on the id index per
        # such row serves.
        clauses.append(
            f"({a}.expires_at IS NULL OR {a}.expires_at > {p}) AND ({a}.superseded_by IS NULL OR NOT coalesce(("
            f"SELECT s.expires_at IS NULL OR s.expires_at > {p} FROM memories s WHERE s.id = {a}.superseded_by), FALSE))"
        )
        params.extend([where.live_at, where.live_at])
    return (" AND ".join(clauses) or "TRUE"), params


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


_CONTENT_COLUMNS = "id, namespace, text, content_hash, tags, importance, metadata"


def content_values(m: Memory | NewMemory) -> tuple[Any, ...]:
    """The values of _CONTENT_COLUMNS: what a memory is, as remember and restore insert it."""
    return (m.id, m.namespace, m.text, m.content_hash, _json(m.tags), m.importance, _json(m.metadata))


class SqlMemories(ABC, Generic[C]):
    """MemoryRepository over a Dialect: the flows both SQL backends run, each with its own statements for
    what only it can do well. A backend's class sets `dialect` and overrides what it does differently."""

    dialect: ClassVar[Dialect]

    def __init__(self, database: Database):
        self.db = database

    @abstractmethod
    def _lock_namespaces(self, db: C, namespaces: Iterable[str]) -> None:
        """Serialise this transaction's writes to these namespaces with every other writer's (remember,
        restore): keys then increase in commit order within a namespace."""

    def _insert_vector(self, db: C, key: int, memory: Memory, model_id: str, vector: Vector) -> None:
        """Store a restored memory's vector (its row was inserted by this transaction): a backend that runs the
        shared restore supplies it (PostgreSQL has its own restore, by COPY)."""
        raise NotImplementedError(f"{type(self).__name__} restores with its own statements")

    def remember(self, new: NewMemory, merge: Merge) -> tuple[Memory, bool]:
        d, p = self.dialect, self.dialect.mark

        def txn(db: C) -> tuple[Memory, bool]:
            self._lock_namespaces(db, [new.namespace])
            row = db.execute(
                f"SELECT {COLUMNS} FROM memories m WHERE m.namespace = {p} AND m.content_hash = {p}",
                (new.namespace, new.content_hash),
            ).fetchone()
            if row is None:
                inserted = db.execute(
                    f"INSERT INTO memories ({_CONTENT_COLUMNS}, created_at, updated_at, expires_at) "
                    f"VALUES ({d.marks(10)}) {RETURNING}",
                    (*content_values(new), new.created_at, new.created_at, new.expires_at),
                ).fetchone()
                stored = d.memory(inserted)
                self._supersede_by(db, stored, new.supersedes)
                return stored, False
            existing = d.memory(row)
            update = merge(existing, new)
            updated = db.execute(
                f"UPDATE memories SET tags = {p}, importance = {p}, metadata = {p}, updated_at = {p}, "
                f"expires_at = {p}, superseded_by = {p} WHERE pk = {p} {RETURNING}",
                (
                    _json(update.tags),
                    update.importance,
                    _json(update.metadata),
                    update.updated_at,
                    update.expires_at,
                    update.superseded_by,
                    existing.key,
                ),
            ).fetchone()
            stored = d.memory(updated)
            self._supersede_by(db, stored, new.supersedes)
            return stored, True

        return self.db.write(txn)

    def _supersede_by(self, db: C, stored: Memory, ids: Sequence[str]) -> None:
        """Mark `ids` (of stored's namespace) as superseded by stored, unless a live memory already supersedes
        one (an earlier correction stays in force: forgetting this one must not bring the old text back)."""
        targets = [i for i in ids if i != stored.id]
        if not targets:
            return
        d, p = self.dialect, self.dialect.mark
        wanted = d.values(targets)
        found = {
            i
            for (i,) in db.execute(
                f"SELECT id FROM memories WHERE namespace = {p} AND {d.in_list('id')}", (stored.namespace, wanted)
            )
        }
        missing = sorted(set(targets) - found)
        if missing:
            raise UnknownMemories(missing)  # the transaction rolls back: nothing is written
        db.execute(
            f"UPDATE memories SET superseded_by = {p} WHERE namespace = {p} AND {d.in_list('id')} "
            "AND (superseded_by IS NULL OR NOT EXISTS (SELECT 1 FROM memories s WHERE s.id = memories.superseded_by "
            f"AND (s.expires_at IS NULL OR s.expires_at > {p})))",
            (stored.id, stored.namespace, wanted, stored.updated_at),
        )

    def restore(self, items: Iterable[tuple[Memory, tuple[str, Vector] | None]]) -> tuple[int, int]:
        insert = (
            f"INSERT INTO memories ({_CONTENT_COLUMNS}, created_at, updated_at, last_accessed_at, access_count, "
            f"expires_at, superseded_by) VALUES ({self.dialect.marks(13)}) ON CONFLICT DO NOTHING RETURNING pk"
        )

        def txn(db: C) -> tuple[int, int]:
            added = skipped = 0
            locked: set[str] = set()
            for m, vector in items:
                if m.namespace not in locked:
                    self._lock_namespaces(db, [m.namespace])
                    locked.add(m.namespace)
                stats = (m.created_at, m.updated_at, m.last_accessed_at, m.access_count, m.expires_at, m.superseded_by)
                row = db.execute(insert, (*content_values(m), *stats)).fetchone()
                if row is None:
                    skipped += 1
                    continue
                added += 1
                if vector is not None:
                    self._insert_vector(db, row[0], m, *vector)
            return added, skipped

        return self.db.write(txn)

    def get(self, namespace: str | None, ids: Sequence[str]) -> list[Memory]:
        return self.find(MemoryFilter(namespace=namespace, ids=tuple(ids)))

    def _memories(self, statement: str, params: Sequence[Any]) -> list[Memory]:
        """The memories a SELECT of COLUMNS returns, in its order."""
        memory = self.dialect.memory
        return self.db.read(lambda db: [memory(r) for r in db.execute(statement, params)])

    def find(self, where: MemoryFilter) -> list[Memory]:
        clause, params = filter_sql(where, self.dialect)
        return self._memories(f"SELECT {COLUMNS} FROM memories m WHERE {clause} ORDER BY m.pk", params)

    def find_by_content(self, pairs: Sequence[tuple[str, str]]) -> list[Memory]:
        if not pairs:
            return []
        rows, params = self.dialect.in_pairs("(m.namespace, m.content_hash)", pairs)
        return self._memories(f"SELECT {COLUMNS} FROM memories m WHERE {rows}", params)

    def scan(self, after_key: int, limit: int, namespaces: Sequence[str] | None = None) -> list[Memory]:
        d, p = self.dialect, self.dialect.mark
        scope = "" if namespaces is None else f" AND {d.in_list('m.namespace')}"
        params: list[Any] = [after_key] + ([] if namespaces is None else [d.values(namespaces)])
        return self._memories(
            f"SELECT {COLUMNS} FROM memories m WHERE m.pk > {p}{scope} ORDER BY m.pk LIMIT {p}", [*params, limit]
        )

    def superseding(self, ids: Sequence[str]) -> list[tuple[str, str]]:
        if not ids:
            return []
        statement = (
            "SELECT superseded_by, namespace FROM memories "
            f"WHERE superseded_by IS NOT NULL AND {self.dialect.in_list('superseded_by')}"
        )
        wanted = self.dialect.values(ids)
        return self.db.read(lambda db: [(str(by), str(ns)) for by, ns in db.execute(statement, (wanted,))])

    def recent(
        self,
        namespace: str,
        limit: int,
        before_key: int | None = None,
        tags: Sequence[str] = (),
        after_key: int | None = None,
    ) -> list[Memory]:
        p = self.dialect.mark
        clause, params = filter_sql(MemoryFilter(namespace=namespace, tags=tuple(tags)), self.dialect)
        if after_key is not None:
            # The `limit` just above after_key, nearest first; then newest first like every page.
            return self._memories(
                f"SELECT {COLUMNS} FROM memories m WHERE {clause} AND m.pk > {p} ORDER BY m.pk LIMIT {p}",
                [*params, after_key, limit],
            )[::-1]
        return self._memories(
            f"SELECT {COLUMNS} FROM memories m WHERE {clause} AND m.pk < {p} ORDER BY m.pk DESC LIMIT {p}",
            [*params, before_key if before_key is not None else MAX_KEY, limit],
        )

    def edit(self, namespace: str, memory_id: str, change: Change) -> Memory | None:
        d, p = self.dialect, self.dialect.mark

        def txn(db: C) -> Memory | None:
            row = db.execute(
                f"SELECT {COLUMNS} FROM memories m WHERE m.namespace = {p} AND m.id = {p}{d.for_update}",
                (namespace, memory_id),
            ).fetchone()
            if row is None:
                return None
            edited = change(d.memory(row))
            return d.memory(
                db.execute(
                    f"UPDATE memories SET tags = {p}, importance = {p}, expires_at = {p} WHERE pk = {p} {RETURNING}",
                    (_json(edited.tags), edited.importance, edited.expires_at, row[0]),
                ).fetchone()
            )

        return self.db.write(txn)

    def created_per_day(self, since: float) -> list[tuple[str, str, int]]:
        statement = (
            f"SELECT namespace, {self.dialect.day('created_at')} AS day, count(*) FROM memories "
            f"WHERE created_at >= {self.dialect.mark} GROUP BY day, namespace ORDER BY day, namespace"
        )
        return self.db.read(lambda db: [(ns, day, count) for ns, day, count in db.execute(statement, (since,))])

    def supersede(self, pairs: Sequence[tuple[str, str]], now: float) -> list[str]:
        p = self.dialect.mark
        statement = (
            f"UPDATE memories SET superseded_by = {p} WHERE id = {p} AND superseded_by IS NULL AND EXISTS ("
            f"SELECT 1 FROM memories k WHERE k.id = {p} AND k.superseded_by IS NULL "
            f"AND k.importance >= memories.importance AND (k.expires_at IS NULL OR k.expires_at > {p})"
            ") RETURNING id"
        )

        def txn(db: C) -> list[str]:
            marked: list[str] = []
            for lose, keep in pairs:
                marked += [i for (i,) in db.execute(statement, (keep, lose, keep, now))]
            return marked

        return self.db.write(txn) if pairs else []

    def counts_by_namespace(self) -> dict[str, int]:
        return self.db.read(
            lambda db: dict(
                db.execute("SELECT namespace, count(*) FROM memories GROUP BY namespace ORDER BY namespace")
            )
        )

    def get_setting(self, name: str) -> str | None:
        statement = f"SELECT value FROM meta WHERE key = {self.dialect.mark}"
        row = self.db.read(lambda db: db.execute(statement, (name,)).fetchone())
        return None if row is None else str(row[0])

    def put_setting(self, name: str, value: str) -> None:
        self.db.write(
            lambda db: db.execute(
                f"INSERT INTO meta(key, value) VALUES ({self.dialect.marks(2)}) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (name, value),
            )
        )

    def put_setting_once(self, name: str, value: str) -> str:
        p = self.dialect.mark

        def txn(db: C) -> str:
            # An empty stored value counts as none (the core treats "" as unset), so it is replaced. On
            # PostgreSQL a concurrent insert of the same key makes this one wait for it to commit, then do
            # nothing; the SELECT (a new snapshot under READ COMMITTED) then reads the committed value.
            db.execute(
                f"INSERT INTO meta(key, value) VALUES ({p}, {p}) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value WHERE meta.value = ''",
                (name, value),
            )
            row = db.execute(f"SELECT value FROM meta WHERE key = {p}", (name,)).fetchone()
            return "" if row is None else str(row[0])

        return self.db.write(txn)
