"""PostgreSQL's vector index: pgvector, one `vector(dim)` table per model with an HNSW cosine index.

Nothing is kept in the process: every search asks the database, so any replica returns the same result and
`load` / `refresh` cost nothing. A search is confined to its namespace (and the recall's filter) in SQL.

Completeness under filters: an HNSW scan returns about ef_search candidates before the WHERE clause drops the
other namespaces' rows, so a plain filtered HNSW query can silently return fewer than k. Three guards:
- a namespace with at most EXACT_SEARCH_MAX vectors is searched exactly (the namespace's rows through its
  btree index, every distance computed): a small namespace in a large table is exactly where HNSW misses;
- larger namespaces use pgvector 0.8's iterative scan (`hnsw.iterative_scan = relaxed_order`, re-sorted),
  which keeps walking the graph until k rows pass the filter, with ef_search and max_scan_tuples raised;
- if that still returned fewer than k, the exact search answers instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import numpy.typing as npt
from psycopg import sql

from ...memory.model import MemoryFilter
from ...memory.ports import Vector
from .connection import Connection, Database
from .repository import PgEmbeddings, as_array, filter_sql
from .schema import HNSW_M

EXACT_SEARCH_MAX = 2_000
"""Namespaces with at most this many vectors are searched exactly: measured 5 ms per query at 2,000 and 228 ms
at 15,000 (384 dims, tests/postgres_ann_recall.py), against 8 ms for the HNSW search at 15,000."""
EF_SEARCH_BY_ROWS = ((10_000, 150), (30_000, 300), (100_000, 500), (1_000_000, 800))
"""hnsw.ef_search that found >= 0.98 of the exact top 10 at these table sizes, with a margin, on indexes of
m=24, ef_construction=128 (bench/pg_ann.py, k=100; bench/RESULTS.md). 10k, 30k, 100k: MiniLM vectors of
bench/scale.py's corpus (10k and 30k its first rows) queried with its query texts: 0.98 / 0.987 at ef 100 / 150,
0.982 / 0.9865 at 250 / 300, 0.981 / 0.984 at 450 / 500. 1M (clustered synthetic vectors, see bench/pg_ann.py):
0.9795 / 0.9835 / 0.9865 at 600 / 800 / 1,000. (The m=16, ef_construction=64 index of earlier versions needed
about twice as much: 500 at 30k.) Between the points interpolated on log scales, beyond them held at the nearest
end. The candidate list, not k, sets the top 10's quality: k only needs to fit in it (a scan asked for k beyond
its list starts another round of the iterative scan, measured slower at ef 100 / k 100 than at ef 200 / k 100),
and a deeper iterative scan does not lift it (1M, m=16, ef 1,000: 0.963 at depth 1,000, 2,000 and 4,000)."""
EF_SEARCH_BY_ROWS_M16 = ((10_000, 200), (30_000, 500), (1_000_000, 1_000))
"""The same for an index of m=16, ef_construction=64, which earlier versions built and which
keeps its parameters until it is dropped (README, Team deployment): 0.9805 at 200 at 10k; 0.9765 / 0.9875 at
400 / 800 at 30k; at 1M 0.9105 / 0.9465 / 0.9605 at 400 / 700 / 1,000, pgvector's limit (that point is the
limit, not 0.98)."""
EF_SEARCH_MAX = 1_000
"""pgvector's own upper limit of hnsw.ef_search."""
MAX_SCAN_TUPLES = 100_000
"""The most tuples an iterative HNSW scan may visit for one search (pgvector's own default is 20,000)."""


def search_sql(table: str, clause: str, *, exact: bool = False) -> sql.Composed:
    """Top-k by cosine distance in one namespace among memories matching `clause`; parameters: query vector,
    namespace, the clause's, query vector, k. Materialised then re-sorted: a relaxed-order iterative scan may
    hand rows over slightly out of order. `exact` orders by an expression the HNSW index cannot serve (the
    distance + 0), so every distance in the namespace is computed; the other indexes stay usable."""
    order = "(e.vector <=> %s) + 0" if exact else "e.vector <=> %s"
    return sql.SQL(
        "WITH r AS MATERIALIZED (SELECT e.memory_pk, e.vector <=> %s AS distance FROM {} e "
        "JOIN memories m ON m.pk = e.memory_pk WHERE e.namespace = %s AND {} "
        "ORDER BY {}, e.memory_pk LIMIT %s) SELECT memory_pk, 1 - distance FROM r ORDER BY distance, memory_pk"
    ).format(sql.Identifier(table), sql.SQL(clause), sql.SQL(order))


def sizes(db: Connection, table: str, namespace: str) -> tuple[int, int]:
    """In one round trip: the table's row count as the catalogue estimates it (kept by (auto)vacuum and
    analyze; -1 or 0 while it has none) and the namespace's rows counted no further than EXACT_SEARCH_MAX + 1
    (a namespace past that takes the index however large it is: a full count cost a scan of the namespace's
    index entries on every recall)."""
    row = db.execute(
        sql.SQL(
            "SELECT (SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(quote_ident(%s))), "
            "(SELECT count(*) FROM (SELECT 1 FROM {} WHERE namespace = %s LIMIT %s) n)"
        ).format(sql.Identifier(table)),
        (table, namespace, EXACT_SEARCH_MAX + 1),
    ).fetchone()
    if row is None:
        return 0, 0
    estimate, in_namespace = (int(row[0]) if row[0] is not None else 0), int(row[1])
    if estimate <= 0 and in_namespace > EXACT_SEARCH_MAX:  # never analysed yet: counted (once, then autovacuum)
        estimate = counted_rows(db, table)
    return max(estimate, in_namespace), in_namespace


def counted_rows(db: Connection, table: str) -> int:
    """The table's exact row count."""
    row = db.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    return int(row[0]) if row else 0


def ef_search_for(k: int, total: int, m: int = HNSW_M) -> int:
    """hnsw.ef_search for a top-k search in a table of about `total` vectors whose index was built with `m`:
    EF_SEARCH_BY_ROWS (EF_SEARCH_BY_ROWS_M16 for a sparser index) interpolated on log scales, at least 2k (a
    scan whose candidate list is used up before k rows are out starts another round of the iterative scan,
    which costs as much again), at most EF_SEARCH_MAX."""
    (n0, ef0), *rest = EF_SEARCH_BY_ROWS if m >= HNSW_M else EF_SEARCH_BY_ROWS_M16
    ef = float(ef0)
    for n1, ef1 in rest:
        if total <= n0:
            break
        ef = ef1 if total >= n1 else ef0 * (ef1 / ef0) ** (math.log(total / n0) / math.log(n1 / n0))
        n0, ef0 = n1, ef1
    return min(EF_SEARCH_MAX, max(math.ceil(ef), 2 * k))


def index_m(db: Connection, table: str) -> int | None:
    """The m the table's HNSW index was built with (pgvector's default 16 if not given); None: no index."""
    row = db.execute(
        "SELECT reloptions FROM pg_class WHERE oid = to_regclass(quote_ident(%s))", (table + "_hnsw",)
    ).fetchone()
    if row is None:
        return None
    options = dict(option.split("=", 1) for option in (row[0] or []))
    return int(options.get("m", 16))


def use_iterative_scan(db: Connection, k: int, total: int, in_namespace: int, m: int = HNSW_M) -> None:
    """For this transaction, in one round trip: HNSW scans keep going until k rows pass the filter
    (pgvector 0.8), with the candidate list of ef_search_for and a tuple budget large enough to expect k of the
    namespace's rows among them. `total` is the catalogue's estimate (stale by up to what autovacuum has not
    yet seen) and `in_namespace` a lower bound (counted to EXACT_SEARCH_MAX + 1), so the budget is bounded to
    MAX_SCAN_TUPLES; a scan that runs out of it returns short and the exact search answers (tested).
    relaxed_order, not strict_order: strict stops a scan at the first row out of order, and the result is
    re-sorted anyway (search_sql)."""
    budget = min(MAX_SCAN_TUPLES, max(20_000, math.ceil(total / max(in_namespace, 1) * k * 8)))
    db.execute(
        "SELECT set_config('hnsw.ef_search', %s, true), set_config('hnsw.iterative_scan', 'relaxed_order', true), "
        "set_config('hnsw.max_scan_tuples', %s, true)",
        (str(ef_search_for(k, total, m)), str(budget)),
    )


class PgVectors:
    def __init__(self, database: Database, embeddings: PgEmbeddings, model_id: str):
        self.db = database
        self.embeddings = embeddings
        self._model_id = model_id
        self._index_m: dict[str, int] = {}
        """Per vector table, its HNSW index's m, read once (an index is rebuilt only by a start)."""

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def loaded(self) -> bool:
        return True  # nothing to load: the index is the database's

    def __len__(self) -> int:
        def q(db: Connection) -> int:
            table = self.embeddings.table(db, self._model_id)
            return 0 if table is None else counted_rows(db, table)

        return self.db.read(q)

    def load(self) -> int:
        return len(self)

    def refresh(self) -> None:
        """Nothing to catch up with: every search reads the shared tables."""

    def one_read(self) -> AbstractContextManager[None]:
        return nullcontext()

    def search(self, namespace: str, query: Vector, k: int, where: MemoryFilter) -> list[tuple[int, float]]:
        q_vec = np.asarray(query, dtype=np.float32).reshape(-1)
        clause, params = filter_sql(where)

        def run(db: Connection) -> list[tuple[int, float]]:
            table = self.embeddings.table(db, self._model_id)
            if table is None:
                return []
            total, in_namespace = sizes(db, table, namespace)
            if in_namespace == 0:
                return []
            query_sql = search_sql(table, clause)
            args = [q_vec, namespace, *params, q_vec, k]
            if in_namespace > EXACT_SEARCH_MAX:
                m = self._index_m.get(table)
                if m is None:
                    m = index_m(db, table)
                    if m is not None:
                        self._index_m[table] = m
                use_iterative_scan(db, k, total, in_namespace, HNSW_M if m is None else m)
                hits = db.execute(query_sql, args).fetchall()
                if len(hits) >= k:
                    return [(int(pk), float(score)) for pk, score in hits]
            hits = db.execute(search_sql(table, clause, exact=True), args).fetchall()
            return [(int(pk), float(score)) for pk, score in hits]

        return self.db.read(run)

    def exact_search(self, namespace: str, query: Vector, k: int, where: MemoryFilter) -> list[tuple[int, float]]:
        """The exact top-k, always (for measuring the approximate search against)."""
        q_vec = np.asarray(query, dtype=np.float32).reshape(-1)
        clause, params = filter_sql(where)

        def run(db: Connection) -> list[tuple[int, float]]:
            table = self.embeddings.table(db, self._model_id)
            if table is None:
                return []
            rows = db.execute(search_sql(table, clause, exact=True), [q_vec, namespace, *params, q_vec, k])
            return [(int(pk), float(score)) for pk, score in rows]

        return self.db.read(run)

    def scores_for(self, namespace: str, query: Vector, keys: Sequence[int]) -> dict[int, float]:
        if not keys:
            return {}
        q_vec = np.asarray(query, dtype=np.float32).reshape(-1)

        def run(db: Connection) -> dict[int, float]:
            table = self.embeddings.table(db, self._model_id)
            if table is None:
                return {}
            return {
                int(pk): float(score)
                for pk, score in db.execute(
                    sql.SQL(
                        "SELECT memory_pk, 1 - (vector <=> %s) FROM {} WHERE namespace = %s AND memory_pk = ANY(%s)"
                    ).format(sql.Identifier(table)),
                    (q_vec, namespace, [int(k) for k in keys]),
                )
            }

        return self.db.read(run)

    def vectors(self, namespace: str) -> tuple[npt.NDArray[np.int64], Vector]:
        def run(db: Connection) -> tuple[npt.NDArray[np.int64], Vector]:
            table = self.embeddings.table(db, self._model_id)
            rows = (
                []
                if table is None
                else db.execute(
                    sql.SQL("SELECT memory_pk, vector FROM {} WHERE namespace = %s ORDER BY memory_pk").format(
                        sql.Identifier(table)
                    ),
                    (namespace,),
                ).fetchall()
            )
            if not rows:
                return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
            keys = np.array([pk for pk, _ in rows], dtype=np.int64)
            matrix = np.vstack([as_array(v) for _, v in rows])
            norms = np.linalg.norm(matrix, axis=1, keepdims=True)
            return keys, (matrix / np.where(norms > 0, norms, 1.0)).astype(np.float32)

        return self.db.read(run)
